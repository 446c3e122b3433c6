"""Workers: one assignment (a model on a device) each, served by one or more lanes."""

from edgetpud.workers.worker import (
    OVERFLOW_POLICIES,
    ModelQueue,
    Overflow,
    Postprocess,
    Preprocess,
    ReportKind,
    Session,
    Worker,
    WorkerReport,
    WorkerState,
    WorkerStats,
)

__all__ = [
    "OVERFLOW_POLICIES",
    "ModelQueue",
    "Overflow",
    "Postprocess",
    "Preprocess",
    "ReportKind",
    "Session",
    "Worker",
    "WorkerReport",
    "WorkerState",
    "WorkerStats",
]
