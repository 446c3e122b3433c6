"""A lane: one interpreter (session) of a worker, and the loop that serves requests with it.

A lane takes a request from its model's queue, preprocesses, invokes, postprocesses
and answers it, then takes the next, all in one thread, as Coral's threaded examples
do. Its session is touched only by its own thread. When the device's host dies under
it, the lane hands its request back and reopens its session in the new host.

The hot path is lean on purpose: `invoke()` releases the GIL but everything around it
does not, so no per-request logging above debug, no copies, and timings from
`time.perf_counter`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgetpud import scheduler
from edgetpud.errors import ModelError, RequestError
from edgetpud.hosts.session import HostLost
from edgetpud.messages import EXPIRED, Request, Result, Timing
from edgetpud.runtime import InvokeError
from edgetpud.workers.ledger import Ledger
from edgetpud.workers.reports import describe
from edgetpud.workers.session import Array, Postprocess, Preprocess, Session

log = logging.getLogger("edgetpud.workers")  # the name users see in the journal

GET_TIMEOUT = 0.1  # how often an idle lane looks at its worker's stop flag
ERROR_BACKOFF_S = 0.01  # a lane pauses this long per consecutive invoke error...
ERROR_BACKOFF_MAX_S = 0.2  # ...up to this, before it takes the next request

Invoke = Callable[[Sequence[Array]], list[Array]]


@dataclass(frozen=True)
class Crew:
    """What every lane of one worker shares."""

    ledger: Ledger
    open_session: Callable[[], Session]
    preprocess: Preprocess
    postprocess: Postprocess
    # Shared Edge TPUs run their invokes in runs by caching token (edgetpud/scheduler.py).
    gate: scheduler.DeviceGate | None
    batch_wait: float


class Lane:
    """One interpreter of a worker. Its thread (started by the worker) calls `open`, then
    `serve`, then `close`; the service thread reads `req` and `started` to find a stall."""

    def __init__(self, crew: Crew, index: int) -> None:
        self.index = index  # 0 for the first lane, the one that opens first
        self.req: Request | None = None  # the request whose invoke runs now
        self.started = 0.0  # time.monotonic() when that invoke began; 0.0 when none runs
        self.session: Session | None = None
        self.info: Any = None  # the first session's ModelInfo, for pre/postprocess
        self._crew = crew
        self._ledger = crew.ledger
        self._invoke: Invoke | None = None

    def stuck(self, now: float, timeout: float) -> bool:
        """Its invoke has run longer than `timeout` seconds."""
        started = self.started
        return bool(started) and now - started > timeout

    # -- opening and closing --------------------------------------------------------------

    def open(self) -> Session:
        """A new session; a host that dies while opening it is simply tried again (the
        pool restarts it with backoff, and raises HostFailed once it keeps dying)."""
        ledger = self._ledger
        while True:
            try:
                self.session = self._crew.open_session()
                return self.session
            except HostLost as exc:
                if ledger.stop.is_set():
                    raise
                log.warning("%s: %s while opening; trying again", ledger.name, exc.reason)

    def close(self) -> None:
        session, self.session = self.session, None
        try:
            if session is not None:
                session.close()
        except Exception:
            log.exception("%s: closing the session failed", self._ledger.name)

    def _reopen(self) -> bool:
        """After a host died: close the dead session and open one in the new host. False
        when that fails (reported once per worker as "open_failed", and the worker ends)
        or the worker is stopping."""
        ledger = self._ledger
        self.close()
        if ledger.stop.is_set():
            return False
        try:
            session = self.open()
        except Exception as exc:
            with ledger.lock:
                first = not ledger.reopen_failed and not ledger.abandoned
                ledger.reopen_failed = True
                if first:
                    ledger.state = "failed"
            ledger.stop.set()
            if first:
                message = describe(exc)
                log.error("%s: could not reopen after its host died: %s", ledger.name, message)
                ledger.report("open_failed", message, exc)
            return False
        if ledger.stop.is_set():
            return False
        log.info("%s: reopened in a new host", ledger.name)
        self._invoke = self._invoker(session)
        return True

    def _invoker(self, session: Session) -> Invoke:
        """The session's invoke, in this model's turn on its device (edgetpud/scheduler.py)."""
        gate = self._crew.gate
        if gate is None:
            return session.invoke
        key, wait, invoke = (
            scheduler.key_for(self.info, self._ledger.model),
            self._crew.batch_wait,
            session.invoke,
        )
        return lambda inputs: gate.run(key, wait, invoke, inputs)

    # -- serving --------------------------------------------------------------------------

    def serve(self) -> None:
        """Take and answer requests until the worker stops, is abandoned, or this lane's
        host died and no new one could be opened."""
        assert self.session is not None
        self._invoke = self._invoker(self.session)
        ledger, stop, mono = self._ledger, self._ledger.stop, time.monotonic
        while not stop.is_set():
            ledger.heartbeat = mono()
            req, queue_ms = self._take()
            if req is not None and not self._run(req, queue_ms):
                return

    def _take(self) -> tuple[Request | None, float]:
        """The next request, now the worker's, and how long it waited (ms). None when none
        came within GET_TIMEOUT, or it was past its deadline (answered so, not run), or
        the worker stopped meanwhile (handed back untouched)."""
        ledger = self._ledger
        idle = ledger.claim_idle()
        req = ledger.queue.get(GET_TIMEOUT, idle=idle)
        if req is None:
            if idle:
                ledger.idle_lane = False
            return None, 0.0
        now = time.monotonic()
        queue_ms = (now - req.received_mono) * 1000.0
        if req.deadline and now > req.deadline:  # its client has given up: not run
            if idle:
                ledger.idle_lane = False
            ledger.deliver(
                Result(req, ledger.device, error=f"{EXPIRED}: waited {queue_ms:.0f} ms, past "
                       "its client's timeout; not run", timing=Timing(queue_ms, 0.0, 0.0, 0.0))
            )  # fmt: skip
            return None, 0.0
        if not ledger.own(req, idle):
            return None, 0.0
        return req, queue_ms

    def _run(self, req: Request, queue_ms: float) -> bool:
        """Preprocess, invoke, postprocess and answer one request the worker owns. False when
        the lane must end: the request was handed back meanwhile (a stall, the stop
        deadline), or its host died and no new one could be opened."""
        ledger, perf, invoke = self._ledger, time.perf_counter, self._invoke
        assert invoke is not None
        t0 = perf()
        try:
            inputs = self._crew.preprocess(req, self.info)
        except Exception as exc:
            if not isinstance(exc, RequestError):
                log.exception("%s: preprocess failed on request %s", ledger.name, req.id)
            pre_ms = (perf() - t0) * 1000.0
            ledger.answer(
                Result(req, ledger.device, error=f"bad request: {describe(exc)}",
                       timing=Timing(queue_ms, pre_ms, 0.0, 0.0))
            )  # fmt: skip
            return True
        t1 = perf()
        if ledger.handed_back(req):
            return False
        self.req = req
        self.started = time.monotonic()
        try:
            outputs = invoke(inputs)
        except HostLost as exc:
            self.started = 0.0
            self.req = None
            if ledger.handed_back(req):
                return False
            ledger.host_lost(req, exc)
            return self._reopen()
        except Exception as exc:
            self.started = 0.0
            self.req = None
            if ledger.handed_back(req):
                return False
            self._invoke_failed(req, exc, queue_ms, (t1 - t0) * 1000.0, (perf() - t1) * 1000.0)
            return True
        t2 = perf()
        self.started = 0.0
        self.req = None
        if ledger.handed_back(req):
            return False  # stalled: the request was handed back, this result is discarded
        ledger.invoke_works()
        self._finish(req, outputs, queue_ms, (t0, t1, t2))
        return True

    def _finish(
        self, req: Request, outputs: list[Array], queue_ms: float, marks: tuple[float, float, float]
    ) -> None:
        """Postprocess and answer; `marks` are when preprocess, invoke and postprocess
        began (time.perf_counter)."""
        name, (t0, t1, t2) = self._ledger.name, marks
        try:
            output = self._crew.postprocess(outputs, req, self.info)
            error = ""
        except RequestError as exc:  # this request's outputs: answered, no traceback
            log.warning("%s: postprocess failed on request %s: %s", name, req.id, exc)
            output, error = None, f"postprocess failed: {describe(exc)}"
        except Exception as exc:
            log.exception("%s: postprocess failed on request %s", name, req.id)
            output, error = None, f"postprocess failed: {describe(exc)}"
        t3 = time.perf_counter()
        timing = Timing(queue_ms, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, (t3 - t2) * 1000.0)
        self._ledger.answer(
            Result(req, self._ledger.device, output, error, timing), (t3 - t0) * 1000.0
        )

    def _invoke_failed(
        self, req: Request, exc: BaseException, queue_ms: float, pre_ms: float, invoke_ms: float
    ) -> None:
        # A ModelError other than InvokeError means these inputs do not fit the model (a
        # preprocessor's bug or a bad tensor request), not that the device failed.
        ledger = self._ledger
        fault = isinstance(exc, InvokeError) or not isinstance(exc, ModelError)
        prefix = f"invoke failed on {ledger.device}: " if fault else "bad request: "
        error = prefix + describe(exc)
        ledger.answer(
            Result(req, ledger.device, error=error, timing=Timing(queue_ms, pre_ms, invoke_ms, 0.0))
        )
        if fault:
            log.warning("%s: %s", ledger.name, error)
            count = ledger.invoke_failed(error, exc)
            # A failing device answers at once: without a pause its lanes would fail a
            # whole queue of requests before the service can quarantine it.
            ledger.stop.wait(min(ERROR_BACKOFF_S * count, ERROR_BACKOFF_MAX_S))
