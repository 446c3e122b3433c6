"""Helpers for worker tests: a collector of results and reports, a scripted session (polling: tests.support.polling).

`ScriptedSession` stands in for a runtime Session ONLY in the pure unit tests
(tests/unit must not load the TFLite runtime): its invoke echoes the input,
errors, or blocks until released, on command. The integration tests use the
real runtime and the fake Edge TPU library instead.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetpud.errors import ModelError
from edgetpud.messages import Request, Result
from edgetpud.runtime import InvokeError
from edgetpud.workers import WorkerReport

DEADLINE = 30.0  # generous: other engineers' tests share this 2-core machine


def lanes_alive() -> list[str]:
    """Names of the workers' lane threads still running (`worker:<model>@<device>…`).

    Tests wait for this to be empty rather than for threading.active_count() to come
    back to where it was: a thread of an earlier test (an MQTT link's probe, say) that
    ends meanwhile would make the count miss its mark for ever."""
    return [t.name for t in threading.enumerate() if t.name.startswith("worker:")]


@dataclass
class Collector:
    """on_result / on_report sink, thread-safe, with views the tests assert on."""

    results: list[Result] = field(default_factory=list)
    reports: list[WorkerReport] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_result(self, result: Result) -> None:
        with self.lock:
            self.results.append(result)

    def on_report(self, report: WorkerReport) -> None:
        with self.lock:
            self.reports.append(report)

    def ids(self) -> Counter[str]:
        with self.lock:
            return Counter(r.request.id for r in self.results)

    def kinds(self) -> list[str]:
        with self.lock:
            return [r.kind for r in self.reports]

    def by_id(self, request_id: str) -> Result:
        with self.lock:
            return next(r for r in self.results if r.request.id == request_id)


@dataclass(frozen=True)
class FakeInfo:
    """The bit of ModelInfo the test pre/postprocessors read."""

    path: str = "fake.tflite"


class ScriptedSession:
    """invoke(inputs) returns [inputs[0] + 1]; payload "error" raises InvokeError, "misfit"
    raises ModelError (inputs that do not fit the model), and payload "hang"
    blocks until `release` is set (like an Edge TPU that stops answering) unless the
    session is `healthy`, which echoes it. `invoke_s` makes every invoke take that long."""

    def __init__(
        self, device: str = "usb:0", *, healthy: bool = False, invoke_s: float = 0.0
    ) -> None:
        self.device = device
        self.healthy = healthy
        self.invoke_s = invoke_s
        self.info = FakeInfo()
        self.release = threading.Event()
        self.hanging = threading.Event()
        self.closed = threading.Event()
        self.invokes = 0
        self.thread: str = ""

    def invoke(self, inputs: Sequence[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        self.thread = threading.current_thread().name
        self.invokes += 1
        if self.invoke_s:
            time.sleep(self.invoke_s)
        value = inputs[0]
        if value.dtype.kind == "U" and str(value) == "error":
            raise InvokeError("inference of fake.tflite failed: Node number 0 failed to invoke")
        if value.dtype.kind == "U" and str(value) == "misfit":
            raise ModelError("input 'x' of fake.tflite wants uint8 [1, 3], got <U6 []")
        if value.dtype.kind == "U" and self.healthy:
            return [value]
        if value.dtype.kind == "U" and str(value) == "hang":
            self.hanging.set()
            self.release.wait(DEADLINE * 4)
            return [value]
        return [value + 1]

    def close(self) -> None:
        self.closed.set()


def array_pre(request: Request, info: Any) -> list[np.ndarray[Any, Any]]:
    return [np.asarray(request.payload)]


def first_item(outputs: list[np.ndarray[Any, Any]], request: Request, info: Any) -> Any:
    return outputs[0].tolist()
