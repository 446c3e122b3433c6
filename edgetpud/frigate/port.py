"""The Frigate endpoint's one way into the daemon: a port onto the model that serves it.

`ModelPort` reads a model object (the daemon's ModelRuntime fits `ServedModel`) and
queues on its queue: what the tests' rig of a bare queue and workers gives it.
`DaemonPort` is the daemon's: admission through the supervisor's intake, the model's
state from the latest snapshot, its input from the model file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from edgetpud.messages import Request
from edgetpud.snapshot import ModelState, Snapshot


class ServedModel(Protocol):
    """What the port reads of the model that serves Frigate (the daemon's ModelRuntime fits)."""

    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> Any: ...  # workers.ModelQueue
    @property
    def info(self) -> Any: ...  # modelfile.ModelInfo; None before it was inspected
    @property
    def workers(self) -> Mapping[str, Any]: ...  # target -> workers.Worker
    @property
    def disabled(self) -> str: ...


class ModelPort:
    """The model named `model`, looked up afresh each time through `lookup` (a reload may
    replace it), and its queue."""

    def __init__(self, model: str, lookup: Callable[[], ServedModel | None]) -> None:
        self.model = model
        self._lookup = lookup

    def info(self) -> Any:
        """The model's ModelInfo, or None when it is not configured or not inspected."""
        served = self._lookup()
        return served.info if served is not None else None

    def unavailable(self) -> str:
        """ "" when a running worker will take the next request; else why not."""
        served = self._lookup()
        if served is None:
            return f"model {self.model} is not configured"
        if served.disabled:
            return f"model {self.model} is disabled: {served.disabled}"
        workers = list(served.workers.values())
        if any(w.state == "running" for w in workers):
            return ""
        if workers:
            return f"model {self.model} is starting on {', '.join(sorted(served.workers))}"
        return (
            f"model {self.model} has no device to run on (no usable Edge TPU for it and no "
            "cpu_model); `edgetpud status` says why"
        )

    def submit(self, request: Request) -> str:
        """Queue `request` without waiting; "" when queued, else why not."""
        served = self._lookup()
        if served is None:
            return f"model {self.model} is not configured"
        if served.queue.put(request, timeout=0.0):
            return ""
        return f"model {self.model}'s queue is full ({served.queue.maxsize} waiting)"


class DaemonPort(ModelPort):
    """The port the daemon gives the endpoint: admission through the supervisor's intake
    (`submit`, None when queued), the model's state from the latest snapshot, and the
    model's input from its file."""

    def __init__(
        self,
        model: str,
        info: Any,
        view: Callable[[], Snapshot | None],
        submit: Callable[[Request], str | None],
    ) -> None:
        super().__init__(model, lambda: None)
        self._info = info
        self._view = view
        self._submit = submit

    def info(self) -> Any:
        return self._info

    def unavailable(self) -> str:
        snap = self._view()
        if snap is None:
            return "edgetpud is starting"
        m = snap.models.get(self.model)
        if m is None:
            return f"model {self.model} is not configured"
        if m.state is ModelState.RUNNING:
            return ""
        if m.state is ModelState.DISABLED:
            return f"model {self.model} is disabled: {m.reason}"
        if m.state is ModelState.STARTING:
            return f"model {self.model} is starting on {', '.join(m.devices)}"
        return (
            f"model {self.model} has no device to run on ({m.reason.removeprefix('waiting: ')}); "
            "`edgetpud status` says more"
        )

    def submit(self, request: Request) -> str:
        return self._submit(request) or ""
