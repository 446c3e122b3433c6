"""A worker: one assignment (a model on a device), its lanes, and their lifecycle.

The worker starts its lanes (edgetpud/workers/lane.py), stops them with a drain
deadline, finds a stall, and gives its figures; what its lanes and the service
share (owned requests, state, counts, reports) is its ledger
(edgetpud/workers/ledger.py).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edgetpud import scheduler
from edgetpud.errors import EdgetpudError
from edgetpud.messages import Request, Result
from edgetpud.workers.lane import Crew, Lane
from edgetpud.workers.ledger import Ledger
from edgetpud.workers.queue import ModelQueue
from edgetpud.workers.reports import WorkerReport, WorkerState, WorkerStats, describe
from edgetpud.workers.session import Postprocess, Preprocess, Session

log = logging.getLogger("edgetpud.workers")  # the name users see in the journal
_SERIALS = itertools.count(1)  # Worker.serial


class Worker:
    """One assignment: one model on one device, served by `interpreters` lanes.

    A lane is a thread with its own interpreter (session) on the device that takes a
    request from the queue, preprocesses, invokes, postprocesses and answers it, then
    takes the next: the pattern of Coral's threaded examples, with no hand-off between
    threads. An Edge TPU runs one inference at a time and the Edge TPU runtime queues
    invokes from several interpreters on one device, so with several lanes one invokes
    while the others do their Python work and wait inside the library for the
    device: the device never waits for Python (nor for a thread to get the GIL back).

    The first lane, thread `worker:<model>@<device>`, opens its session itself
    (opening can take seconds: firmware upload, parameter transfer) and reports
    "opened" or "open_failed"; the others (`…/2`, …) then open theirs, and one that
    cannot runs without (logged). Each session is touched only by the lane that opened it.
    """

    def __init__(  # noqa: PLR0917 - the service's calling convention
        self,
        model: str,
        device: str,
        queue: ModelQueue,
        open_session: Callable[[], Session],
        preprocess: Preprocess,
        postprocess: Postprocess,
        on_result: Callable[[Result], None],
        on_report: Callable[[WorkerReport], None],
        *,
        stall_timeout: float,
        max_attempts: int = 3,
        interpreters: int = 1,
        batch_wait: float = scheduler.DEFAULT_BATCH_WAIT,
        gates: scheduler.Gates | None = scheduler.GATES,
    ) -> None:
        if interpreters < 1:
            raise ValueError(f"a worker needs at least 1 interpreter, got {interpreters}")
        self.model = model
        self.device = device
        self.name = f"worker:{model}@{device}"
        self.serial = next(_SERIALS)
        self.queue = queue
        self.stall_timeout = stall_timeout
        self.max_attempts = max_attempts
        self.info: Any = None  # the session's ModelInfo once opened
        gate = gates.get(device) if gates is not None and device != "cpu" else None
        self._ledger = ledger = Ledger(
            self.name, model, device, self.serial, queue, max_attempts, on_result, on_report
        )
        crew = Crew(ledger, open_session, preprocess, postprocess, gate, batch_wait)
        self._lanes = [Lane(crew, lane) for lane in range(interpreters)]
        self._lanes_left = 0  # lanes still running; under the ledger's lock
        self._threads = [
            threading.Thread(
                target=self._run_lane,
                args=(lane,),
                name=self.name if lane.index == 0 else f"{self.name}/{lane.index + 1}",
                daemon=True,
            )
            for lane in self._lanes
        ]

    # -- control, from the service thread -------------------------------------------------

    def start(self) -> None:
        """Start the first lane; it opens its session, reports "opened" or "open_failed",
        starts the other lanes, then serves."""
        self._threads[0].start()

    @property
    def interpreters(self) -> int:
        return len(self._threads)

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def state(self) -> WorkerState:
        return self._ledger.state

    @property
    def hung(self) -> bool:
        return self._ledger.state == "stalled"

    def stop(self, deadline: float) -> list[Request]:
        """Stop taking work and let what is in flight finish until `deadline` (monotonic).

        Returns the requests it could not finish, in the order they were taken, for the
        caller to requeue (in reverse, see `ModelQueue.requeue`) or answer. Each lane
        closes its session when it ends; a lane still stuck at the deadline is abandoned
        (a daemon thread cannot block exit) and whatever it finishes later is discarded.
        """
        ledger = self._ledger
        ledger.stop.set()
        with ledger.lock:
            if ledger.state not in ("stalled", "failed", "stopped"):
                ledger.state = "stopping"
            abandoned = ledger.abandoned
        if self._threads[0].ident is None:  # never started
            ledger.state = "stopped"
            return []
        me = threading.current_thread()
        if not abandoned:  # hung lanes are not waited for
            for thread in self._threads:
                if thread.ident is not None and thread is not me:
                    thread.join(max(0.0, deadline - time.monotonic()))
        with ledger.lock:
            left = ledger.take_back()
            if left:
                ledger.abandoned = True
        if left:
            log.warning(
                "%s did not finish %d request(s) before the stop deadline; handing them back",
                self.name,
                len(left),
            )
        return left

    def check_stall(self, now: float) -> bool:
        """Called by the service each tick. An invoke running past `stall_timeout` marks this
        worker hung: its request goes back to the front of the queue (attempts + 1), ahead
        of the requests the other lanes had taken (they go back as they were: they
        waited for the same device), a "stalled" report goes out, and the lanes are
        abandoned. True only on that transition."""
        timeout, ledger = self.stall_timeout, self._ledger
        if not any(lane.stuck(now, timeout) for lane in self._lanes):
            return False
        with ledger.lock:
            if ledger.abandoned:
                return False
            stuck_lanes = [
                lane for lane in self._lanes if lane.req is not None and lane.stuck(now, timeout)
            ]
            if not stuck_lanes:
                return False
            started = min(lane.started for lane in stuck_lanes)
            ledger.abandoned = True
            ledger.state = "stalled"
            stuck = [
                lane.req for lane in stuck_lanes if lane.req and ledger.owned.pop(lane.req.id, None)
            ]
            back = ledger.take_back()
        ledger.stop.set()
        message = (
            f"invoke on {self.device} has run {now - started:.1f} s (stall_timeout "
            f"{self.stall_timeout:g} s); the device is treated as hung and its work moves elsewhere"
        )
        log.error("%s: %s", self.name, message)
        for req in reversed(back):
            self.queue.requeue(req)
        for req in reversed(stuck):
            ledger.hand_back(req, message)
        ledger.report("stalled", message)
        return True

    def stats(self) -> WorkerStats:
        return self._ledger.stats()

    # -- a lane's thread ------------------------------------------------------------------

    def _run_lane(self, lane: Lane) -> None:
        try:
            session = lane.open()
        except Exception as exc:
            self._open_failed(lane, exc)
            return
        if not lane.index:
            self._opened(session.info)
        try:
            lane.serve()
        finally:
            lane.close()
            self._lane_done()

    def _opened(self, info: Any) -> None:
        """The first lane has its session: report "opened" and start the other lanes."""
        ledger = self._ledger
        self.info = info
        for lane in self._lanes:  # the others have not started yet
            lane.info = info
        with ledger.lock:
            if ledger.state == "starting":
                ledger.state = "running"
            more = [] if ledger.stop.is_set() else self._threads[1:]
            self._lanes_left = 1 + len(more)
        ledger.report("opened")
        for thread in more:
            thread.start()

    def _open_failed(self, lane: Lane, exc: Exception) -> None:
        """The first lane failing to open fails the worker; another serves with fewer."""
        message = describe(exc)
        if lane.index:
            log.warning(
                "%s: interpreter %d of %d could not open, serving with fewer: %s",
                self.name,
                lane.index + 1,
                len(self._threads),
                message,
            )
            self._lane_done()
            return
        self._ledger.state = "failed"
        if isinstance(exc, EdgetpudError):
            log.error("%s: could not open: %s", self.name, message)
        else:
            log.exception("%s: could not open", self.name)
        self._ledger.report("open_failed", message, exc)

    def _lane_done(self) -> None:
        """Each lane calls this last; the last one out reports "stopped"."""
        ledger = self._ledger
        with ledger.lock:
            self._lanes_left -= 1
            last = self._lanes_left == 0
            abandoned = ledger.abandoned
        if not last:
            return
        if abandoned:
            log.info("%s: abandoned threads have ended", self.name)
            return
        if ledger.state != "failed":  # could not reopen after its host died: stays failed
            ledger.state = "stopped"
        ledger.report("stopped")
