"""The records that flow between parts: a Request into a model's queue, a Result out.

Plain data, no behaviour: sources and the MQTT layer build Requests, workers turn
them into Results, the MQTT layer publishes Results. Times are `time.time()`
wall-clock seconds for payloads and `time.monotonic()` seconds for durations.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

PayloadKind = Literal["image", "tensor", "array"]

_counter = itertools.count(1)
_prefix = f"{os.getpid():x}"


def new_request_id() -> str:
    """A request id unique within this daemon's lifetime (pid + counter)."""
    return f"{_prefix}-{next(_counter)}"


@dataclass(frozen=True)
class ReplyTo:
    """Where the answer to one request goes (MQTT 5 response topic + correlation data)."""

    topic: str
    correlation: bytes | None = None


@dataclass(frozen=True)
class Request:
    """One unit of work for one model.

    payload: encoded image bytes (kind "image"), raw input-tensor bytes
    (kind "tensor"), or a numpy array already shaped like the input (kind "array",
    e.g. from the synthetic source). `meta` is the source's own data (file name,
    frame number) and is echoed in the result.

    deadline: `time.monotonic()` after which the client has certainly given up (a
    Frigate detector's request_timeout_ms past its arrival); a worker that takes it
    later answers it with an `expired:` error without running it. 0: no deadline.
    reply: where the Result goes instead of the MQTT results topic (the Frigate
    endpoint's); called once, from a worker thread, and must not block.
    """

    model: str
    payload: Any
    kind: PayloadKind = "image"
    id: str = field(default_factory=new_request_id)
    source: str = ""
    reply_to: ReplyTo | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    received_at: float = field(default_factory=time.time)
    received_mono: float = field(default_factory=time.monotonic)
    attempts: int = 0
    deadline: float = 0.0
    reply: Callable[[Result], None] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Timing:
    """Where a request's time went, in milliseconds."""

    queue_ms: float
    preprocess_ms: float
    invoke_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        return self.queue_ms + self.preprocess_ms + self.invoke_ms + self.postprocess_ms


EXPIRED = "expired"  # the error of a Result whose request's deadline passed before it ran


@dataclass(frozen=True)
class Result:
    """The answer to one Request: the postprocessed output, or an error reason."""

    request: Request
    device: str
    output: Any = None
    error: str = ""
    timing: Timing | None = None
    finished_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def expired(self) -> bool:
        """Not run: its client had given up (see Request.deadline)."""
        return self.error.startswith(EXPIRED + ":")
