"""A worker's ledger: which requests it owns, what state it is in, what it has done.

Its lanes and the service thread (stop, stall check, stats) share it under one lock.
A request is in `owned` from the moment a lane takes it from the queue until it is
answered or handed back; whoever removes it (under the lock) is the only one who may
answer it, so a request is never answered twice and a late result from an abandoned
lane is discarded. Every report leaves from here, numbered with the worker's serial.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable

from edgetpud.hosts.session import HostLost
from edgetpud.messages import Request, Result
from edgetpud.workers.queue import ModelQueue
from edgetpud.workers.reports import ReportKind, WorkerReport, WorkerState, WorkerStats

log = logging.getLogger("edgetpud.workers")  # the name users see in the journal

LATENCY_WINDOW = 256  # recent requests kept for p50/p99
EWMA_ALPHA = 0.1  # weight of the newest request in the moving-average latency


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
    return ordered[index]


class Ledger:
    """The state a worker's lanes and its service-side control share.

    `lock` guards everything here that more than one thread touches; methods documented
    "lock held" expect the caller to hold it. `stop` is set when the worker stops
    taking work (stop, stall, a host it cannot reopen)."""

    def __init__(  # noqa: PLR0917 - the worker's identity and its two outlets
        self,
        name: str,
        model: str,
        device: str,
        serial: int,
        queue: ModelQueue,
        max_attempts: int,
        on_result: Callable[[Result], None],
        on_report: Callable[[WorkerReport], None],
    ) -> None:
        self.name = name
        self.model = model
        self.device = device
        self.serial = serial
        self.queue = queue
        self.max_attempts = max_attempts
        self._on_result = on_result
        self._on_report = on_report
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.owned: dict[str, Request] = {}
        self.idle_lane = False  # a lane waits for a request as this idle worker's
        self.abandoned = False  # stalled, or stopped past the deadline
        self.lost_hosts: set[int] = set()  # pids of the hosts whose death was reported
        self.reopen_failed = False
        self.state: WorkerState = "starting"
        self.heartbeat = 0.0
        self.processed = 0
        self.errors = 0
        self.consecutive_errors = 0
        self.latency_ewma = 0.0
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    # -- taking and giving back -----------------------------------------------------------

    def claim_idle(self) -> bool:
        """True when the calling lane may wait as the worker's idle lane: only one lane at a
        time, and only while the worker runs nothing, so that a request goes to an idle
        device before it queues behind another on a busy one (ModelQueue.get)."""
        with self.lock:
            idle = not self.owned and not self.idle_lane
            if idle:
                self.idle_lane = True
        return idle

    def own(self, req: Request, idle: bool) -> bool:
        """Make a request taken from the queue the worker's; False (and the request back at
        the front of the queue, untouched) when the worker stopped meanwhile."""
        with self.lock:
            if idle:  # owned before it is given up: no other lane waits as idle meanwhile
                self.idle_lane = False
            if self.stop.is_set():
                self.queue.requeue(req)
                return False
            self.owned[req.id] = req
        return True

    def handed_back(self, req: Request) -> bool:
        """The worker was abandoned (stall, stop deadline) or `req` was taken back: the
        lane must not run or answer it, and ends."""
        return self.abandoned or req.id not in self.owned

    def take_back(self) -> list[Request]:
        """Lock held: remove every request the worker owns, in the order taken, for the
        caller to requeue or answer; whatever its lanes finish later is discarded."""
        left = list(self.owned.values())
        self.owned.clear()
        return left

    def hand_back(self, req: Request, why: str) -> None:
        """Requeue a request for another worker, or answer it if it has had its tries."""
        attempts = req.attempts + 1
        if attempts >= self.max_attempts:
            error = f"request abandoned after {attempts} attempts, the last: {why}"
            self.deliver(Result(request=req, device=self.device, error=error))
        else:
            self.queue.requeue(dataclasses.replace(req, attempts=attempts))

    def host_lost(self, req: Request, exc: HostLost) -> None:
        """The device's host died under a lane: hand the request back to the front of the
        queue (an attempt only if it was inside the host: it may be what killed it), and
        report the death once per host."""
        with self.lock:
            taken = self.owned.pop(req.id, None) is not None
            first = exc.pid not in self.lost_hosts
            self.lost_hosts.add(exc.pid)
        if taken:
            if exc.sent:
                self.hand_back(req, exc.reason)
            else:
                self.queue.requeue(req)
        if first:
            log.error("%s: %s; its requests go back to the queue", self.name, exc.reason)
            self.report("host_lost", exc.reason, exc)

    # -- answering ------------------------------------------------------------------------

    def answer(self, result: Result, ms: float = 0.0) -> None:
        """Answer a request the worker still owns and count it; a request handed back
        meanwhile (stall, stop deadline) is not answered: whoever took it back answers it."""
        req = result.request
        with self.lock:
            if self.owned.pop(req.id, None) is None:
                log.debug(
                    "%s: discarding the late result of request %s (handed back)", self.name, req.id
                )
                return
            if result.error:
                self.errors += 1
            else:
                self.latencies.append(ms)
                if self.processed:
                    self.latency_ewma += EWMA_ALPHA * (ms - self.latency_ewma)
                else:
                    self.latency_ewma = ms
                self.processed += 1
        self.deliver(result)

    def deliver(self, result: Result) -> None:
        """Hand a result to `on_result` (no ownership check: the caller answers it)."""
        try:
            self._on_result(result)
        except Exception:
            log.exception(
                "%s: the result handler failed on request %s", self.name, result.request.id
            )

    # -- invoke errors and reports ----------------------------------------------------------

    def invoke_failed(self, error: str, exc: BaseException) -> int:
        """Count a device fault and report it; the count of faults in a row."""
        with self.lock:
            self.consecutive_errors += 1
            # Under the lock, so that whichever lane failed, reports leave in the order
            # of the count and the service sees exactly its quarantine_after-th error.
            self.report("invoke_error", error, exc)
            return self.consecutive_errors

    def invoke_works(self) -> None:
        """An invoke succeeded: after faults, report "recovered" (once)."""
        if not self.consecutive_errors:  # the usual case takes no lock
            return
        with self.lock:  # reported under the lock: reports leave in the order of the count
            if self.consecutive_errors:
                self.consecutive_errors = 0
                log.info("%s: invoke works again", self.name)
                self.report("recovered")

    def report(self, kind: ReportKind, error: str = "", exc: BaseException | None = None) -> None:
        """Hand a report to `on_report`, which must not block nor call back into this worker
        (the service's is a queue put): lanes call it with `lock` held."""
        report = WorkerReport(
            self.name,
            self.model,
            self.device,
            kind,
            error,
            self.consecutive_errors,
            exc,
            self.serial,
        )
        try:
            self._on_report(report)
        except Exception:
            log.exception("%s: the report handler failed on %s", self.name, kind)

    def stats(self) -> WorkerStats:
        ordered = sorted(self.latencies)
        return WorkerStats(
            worker=self.name,
            model=self.model,
            device=self.device,
            state=self.state,
            heartbeat=self.heartbeat,
            processed=self.processed,
            errors=self.errors,
            consecutive_errors=self.consecutive_errors,
            latency_ms=self.latency_ewma,
            p50_ms=_percentile(ordered, 0.50),
            p99_ms=_percentile(ordered, 0.99),
            in_flight=bool(self.owned),
        )
