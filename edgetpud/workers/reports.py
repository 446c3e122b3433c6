"""What a worker tells the daemon: reports of what happened to it, its health figures,
and how a failure reads in results, health, events and quarantine reasons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgetpud.errors import EdgetpudError

ReportKind = Literal[
    "opened", "open_failed", "invoke_error", "recovered", "stalled", "host_lost", "stopped"
]
WorkerState = Literal["starting", "running", "failed", "stalled", "stopping", "stopped"]


@dataclass(frozen=True)
class WorkerReport:
    """Something that happened to a worker, for the service to act on."""

    worker: str
    model: str
    device: str
    kind: ReportKind
    error: str = ""
    consecutive_errors: int = 0
    exc: BaseException | None = None
    # which Worker object sent it: a model re-planned back onto the same device gets a new
    # worker with the same name, and a late report of the old one must not be taken for its
    serial: int = 0


@dataclass(frozen=True)
class WorkerStats:
    """A worker's health, for the health snapshot and the service's watchdog."""

    worker: str
    model: str
    device: str
    state: WorkerState
    heartbeat: float  # time.monotonic() of the last loop turn; 0.0 before the first
    processed: int
    errors: int
    consecutive_errors: int
    latency_ms: float  # moving average of preprocess + invoke + postprocess
    p50_ms: float
    p99_ms: float
    in_flight: bool


def describe(exc: BaseException) -> str:
    """A failure as results, health, events and quarantine reasons show it.

    edgetpud's own errors already say what happened and what to do next, so their
    message is all a user reads. Anything else is unexpected (a bug here or in a
    plugin): its class name stays, because that is what a bug report needs.
    """
    text = str(exc).strip()
    if isinstance(exc, EdgetpudError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
