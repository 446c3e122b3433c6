"""Workers: one assignment (a model on a device) each, served by one or more lanes.

A `ModelQueue` holds the requests waiting for one model; every worker serving that
model (one per replica) takes from it. A `Worker`'s lanes are threads, each with its
own interpreter on the worker's device, that take a request, preprocess it, invoke,
postprocess and hand the `Result` to `on_result`, all in one thread, as Coral's
threaded examples do. On an Edge TPU the service runs several lanes
(`runtime.tpu_interpreters`): the runtime queues the invokes of several interpreters
on one device, so while one lane invokes the others do their Python work and then
wait inside the library, and the device never waits for Python. What happens to the
worker (opened, open failed, invoke errors, recovery, stall, stop) goes to
`on_report` as a `WorkerReport`; the service decides what to do about it.

Nothing is lost: every request a worker takes from the queue is either answered
(a Result, possibly with `error` set) or handed back (requeued at the front of
its queue on a stall, or returned from `stop()` when the drain deadline passes).
A request is never answered twice: whoever removes it from the worker's owned set
(under a lock) is the only one who may answer it, so a late result from an
abandoned thread is discarded.

The modules:
- queue.py: `ModelQueue`, the requests waiting for one model;
- worker.py: `Worker`, its lanes' lifecycle: start, stop with a drain deadline,
  stall check, figures;
- lane.py: `Lane`, one interpreter and the loop that serves requests with it
  (the hot path), and its reopening after its device's host died;
- ledger.py: `Ledger`, what the lanes and the service share under one lock: the
  requests the worker owns, its state, its counts and latencies, its reports;
- reports.py: `WorkerReport`, `WorkerStats`, and how a failure reads;
- session.py: `Session`, what a worker needs from a session, and the plugin hooks.
"""

from edgetpud.workers.queue import OVERFLOW_POLICIES, ModelQueue, Overflow
from edgetpud.workers.reports import ReportKind, WorkerReport, WorkerState, WorkerStats
from edgetpud.workers.session import Postprocess, Preprocess, Session
from edgetpud.workers.worker import Worker

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
