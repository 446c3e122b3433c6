"""Workers: one named thread per assignment (a model on a device), owning one interpreter.

A `ModelQueue` holds the requests waiting for one model; every worker serving that
model (one per replica) takes from it. A `Worker` opens its session in its own
thread, then loops: take a request, preprocess, invoke, postprocess, hand the
`Result` to `on_result`. What happens to the worker (opened, open failed, invoke
errors, recovery, stall, stop) goes to `on_report` as a `WorkerReport`; the
service decides what to do about it (quarantine a device, move the model).

Nothing is lost: every request a worker takes from the queue is either answered
(a Result, possibly with `error` set) or handed back (requeued at the front of
its queue on a stall, or returned from `stop()` when the drain deadline passes).
A request is never answered twice: the worker claims the right to answer under a
lock, and a worker that was abandoned discards whatever it finishes later.

The hot path is lean on purpose: `invoke()` releases the GIL but everything
around it does not, so no per-request logging above debug, no copies, and timings
from `time.perf_counter`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy.typing as npt

from edgetpud.errors import EdgetpudError, ModelError, RequestError
from edgetpud.messages import Request, Result, Timing
from edgetpud.runtime import InvokeError

log = logging.getLogger(__name__)

Overflow = Literal["block", "drop_oldest", "latest"]
OVERFLOW_POLICIES: tuple[Overflow, ...] = ("block", "drop_oldest", "latest")
ReportKind = Literal["opened", "open_failed", "invoke_error", "recovered", "stalled", "stopped"]
WorkerState = Literal["starting", "running", "failed", "stalled", "stopping", "stopped"]

LATENCY_WINDOW = 256  # recent requests kept for p50/p99
EWMA_ALPHA = 0.1  # weight of the newest request in the moving-average latency
GET_TIMEOUT = 0.1  # how often an idle worker looks at its stop flag

Array = npt.NDArray[Any]


class Session(Protocol):
    """What a worker needs from `edgetpud.runtime.Session` (kept structural so this module
    does not import the TFLite runtime)."""

    @property
    def info(self) -> Any: ...

    @property
    def device(self) -> str: ...

    def invoke(self, inputs: Sequence[Array]) -> list[Array]: ...

    def close(self) -> None: ...


# info is an edgetpud.modelfile.ModelInfo; typed Any here for the same reason as Session.
Preprocess = Callable[[Request, Any], list[Array]]
Postprocess = Callable[[list[Array], Request, Any], Any]


class ModelQueue:
    """The requests waiting for one model, shared by all its workers. Thread-safe.

    `maxsize` bounds the requests sources put in. When full, `overflow` decides:
    "block" makes `put` wait (up to its timeout) and return False if still full;
    "drop_oldest" drops the oldest waiting request; "latest" drops every waiting
    request and keeps only the new one (camera-like sources, where only the newest
    frame matters). Requests handed back by `requeue` (failover, stall) go first,
    are never dropped and do not count against `maxsize`.
    """

    def __init__(self, model: str, maxsize: int, overflow: Overflow = "block") -> None:
        self.model = model
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._items: collections.deque[Request] = collections.deque()
        self._requeued: collections.deque[Request] = collections.deque()
        self._maxsize = 1
        self._overflow: Overflow = "block"
        self.dropped = 0
        self.set_limits(maxsize, overflow)

    def set_limits(self, maxsize: int, overflow: Overflow) -> None:
        """Change size and policy in place (config reload); waiting requests are kept."""
        if maxsize < 1:
            raise ValueError(
                f"queue size for model {self.model!r} must be at least 1, got {maxsize}"
            )
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(
                f"overflow policy for model {self.model!r} must be one of "
                f"{', '.join(OVERFLOW_POLICIES)}, got {overflow!r}"
            )
        with self._lock:
            self._maxsize = maxsize
            self._overflow = overflow
            self._not_full.notify_all()

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def overflow(self) -> Overflow:
        return self._overflow

    @property
    def depth(self) -> int:
        """Requests waiting now (requeued ones included)."""
        return len(self._items) + len(self._requeued)

    def put(self, req: Request, timeout: float | None = None) -> bool:
        """Add a request; False only under "block" when the queue stayed full for `timeout`."""
        with self._lock:
            items = self._items
            if len(items) >= self._maxsize:
                overflow = self._overflow
                if overflow == "block":
                    if not self._not_full.wait_for(
                        lambda: len(self._items) < self._maxsize, timeout
                    ):
                        return False
                elif overflow == "drop_oldest":
                    while len(items) >= self._maxsize:
                        items.popleft()
                        self.dropped += 1
            if self._overflow == "latest" and items:
                self.dropped += len(items)
                items.clear()
            items.append(req)
            self._not_empty.notify()
            return True

    def requeue(self, req: Request) -> None:
        """Put a request back at the very front of the queue (it is taken next): never dropped,
        ignores maxsize. To hand back several in their order, requeue them in reverse."""
        with self._lock:
            self._requeued.appendleft(req)
            self._not_empty.notify()

    def get(self, timeout: float) -> Request | None:
        """The next request (requeued ones first), or None after `timeout` seconds."""
        with self._lock:
            if not self._requeued and not self._items:
                self._not_empty.wait(timeout)
            if self._requeued:
                return self._requeued.popleft()
            if self._items:
                req = self._items.popleft()
                self._not_full.notify()
                return req
            return None

    def drain(self) -> list[Request]:
        """Take every waiting request out (requeued first), e.g. to move them or answer them."""
        with self._lock:
            out = [*self._requeued, *self._items]
            self._requeued.clear()
            self._items.clear()
            self._not_full.notify_all()
            return out


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


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
    return ordered[index]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker:
    """One assignment: one model on one device, one thread, one interpreter.

    The thread opens the session itself (opening can take seconds: firmware
    upload, parameter transfer), and only that thread ever touches it.
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
    ) -> None:
        self.model = model
        self.device = device
        self.name = f"worker:{model}@{device}"
        self.queue = queue
        self.stall_timeout = stall_timeout
        self.max_attempts = max_attempts
        self._open_session = open_session
        self._preprocess = preprocess
        self._postprocess = postprocess
        self._on_result = on_result
        self._on_report = on_report
        self._stop = threading.Event()
        # _lock guards the hand-over of a request between this thread and whoever
        # abandons it (check_stall, stop): _in_flight, _invoke_started, _abandoned.
        self._lock = threading.Lock()
        self._in_flight: Request | None = None
        self._invoke_started = 0.0  # time.monotonic(); 0.0 when no invoke is running
        self._abandoned = False
        self._state: WorkerState = "starting"
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._heartbeat = 0.0
        self._processed = 0
        self._errors = 0
        self._consecutive_errors = 0
        self._latency_ewma = 0.0
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.info: Any = None  # the session's ModelInfo once opened

    # -- control, from the service thread -------------------------------------------------

    def start(self) -> None:
        """Start the thread; it opens the session, reports "opened" or "open_failed", then serves."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def hung(self) -> bool:
        return self._state == "stalled"

    def stop(self, deadline: float) -> list[Request]:
        """Stop taking work and wait for the in-flight request until `deadline` (monotonic).

        Returns the requests it could not finish, for the caller to requeue or answer.
        The thread closes its session when its loop ends; a thread stuck past the
        deadline is abandoned (it is a daemon thread, so it cannot block exit) and
        anything it finishes later is discarded.
        """
        self._stop.set()
        if self._state not in ("stalled", "failed", "stopped"):
            self._state = "stopping"
        if self._thread.ident is None:  # never started
            self._state = "stopped"
            return []
        if self._thread is not threading.current_thread():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            req = self._in_flight
            if req is None or not self._thread.is_alive():
                return []
            self._abandoned = True
            self._in_flight = None
        log.warning(
            "%s did not finish request %s before the stop deadline; handing it back",
            self.name,
            req.id,
        )
        return [req]

    def check_stall(self, now: float) -> bool:
        """Called by the service each tick. An invoke running past `stall_timeout` marks this
        worker hung: its request goes back to the front of the queue (attempts + 1), a
        "stalled" report goes out, and the thread is abandoned. True only on that transition."""
        started = self._invoke_started
        if not started or now - started <= self.stall_timeout:
            return False
        with self._lock:
            started = self._invoke_started
            if self._abandoned or not started or now - started <= self.stall_timeout:
                return False
            self._abandoned = True
            self._state = "stalled"
            req, self._in_flight = self._in_flight, None
        self._stop.set()
        waited = now - started
        message = (
            f"invoke on {self.device} has run {waited:.1f} s (stall_timeout {self.stall_timeout:g} s); "
            "the device is treated as hung and its work moves elsewhere"
        )
        log.error("%s: %s", self.name, message)
        if req is not None:
            self._hand_back(req, message)
        self._report("stalled", message)
        return True

    def stats(self) -> WorkerStats:
        ordered = sorted(self._latencies)
        return WorkerStats(
            worker=self.name,
            model=self.model,
            device=self.device,
            state=self._state,
            heartbeat=self._heartbeat,
            processed=self._processed,
            errors=self._errors,
            consecutive_errors=self._consecutive_errors,
            latency_ms=self._latency_ewma,
            p50_ms=_percentile(ordered, 0.50),
            p99_ms=_percentile(ordered, 0.99),
            in_flight=self._in_flight is not None,
        )

    # -- the thread -----------------------------------------------------------------------

    def _report(self, kind: ReportKind, error: str = "", exc: BaseException | None = None) -> None:
        report = WorkerReport(
            self.name, self.model, self.device, kind, error, self._consecutive_errors, exc
        )
        try:
            self._on_report(report)
        except Exception:
            log.exception("%s: the report handler failed on %s", self.name, kind)

    def _answer(self, result: Result) -> None:
        try:
            self._on_result(result)
        except Exception:
            log.exception(
                "%s: the result handler failed on request %s", self.name, result.request.id
            )

    def _hand_back(self, req: Request, why: str) -> None:
        """Requeue an abandoned request for another worker, or answer it if it has had its tries."""
        attempts = req.attempts + 1
        if attempts >= self.max_attempts:
            self._answer(
                Result(
                    request=req,
                    device=self.device,
                    error=f"request abandoned after {attempts} attempts, the last: {why}",
                )
            )
        else:
            self.queue.requeue(dataclasses.replace(req, attempts=attempts))

    def _run(self) -> None:
        try:
            session = self._open_session()
        except Exception as exc:
            self._state = "failed"
            message = _describe(exc)
            if isinstance(exc, EdgetpudError):
                log.error("%s: could not open: %s", self.name, message)
            else:
                log.exception("%s: could not open", self.name)
            self._report("open_failed", message, exc)
            return
        self.info = session.info
        if not self._stop.is_set():
            self._state = "running"
        self._report("opened")
        try:
            self._loop(session)
        finally:
            try:
                session.close()
            except Exception:
                log.exception("%s: closing the session failed", self.name)
            with self._lock:
                abandoned = self._abandoned
            if not abandoned:
                self._state = "stopped"
                self._report("stopped")
            else:
                log.info("%s: abandoned thread finished and closed its session", self.name)

    def _loop(self, session: Session) -> None:
        stop = self._stop
        get = self.queue.get
        while not stop.is_set():
            try:
                self._heartbeat = time.monotonic()
                req = get(GET_TIMEOUT)
                if req is None:
                    continue
                with self._lock:
                    if stop.is_set():  # stopped while waiting: hand it back untouched
                        self.queue.requeue(req)
                        return
                    self._in_flight = req
                if not self._process(session, req):
                    return
            except Exception:
                log.exception("%s: unexpected error; carrying on", self.name)

    def _process(self, session: Session, req: Request) -> bool:
        """Serve one request; False when this worker was abandoned meanwhile (exit the loop)."""
        perf = time.perf_counter
        queue_ms = (time.monotonic() - req.received_mono) * 1000.0
        info = session.info
        t0 = perf()
        try:
            inputs = self._preprocess(req, info)
        except Exception as exc:
            if not isinstance(exc, RequestError):
                log.exception("%s: preprocess failed on request %s", self.name, req.id)
            t1 = perf()
            return self._finish(
                Result(
                    req,
                    self.device,
                    error=f"bad request: {_describe(exc)}",
                    timing=Timing(queue_ms, (t1 - t0) * 1000.0, 0.0, 0.0),
                ),
                device_fault=False,
            )
        t1 = perf()
        self._invoke_started = time.monotonic()
        try:
            outputs = session.invoke(inputs)
        except Exception as exc:
            self._invoke_started = 0.0
            t2 = perf()
            # A ModelError other than InvokeError means these inputs do not fit the model
            # (a preprocessor's bug or a bad tensor request), not that the device failed.
            fault = isinstance(exc, InvokeError) or not isinstance(exc, ModelError)
            error = f"invoke failed on {self.device}: " if fault else "bad request: "
            return self._finish(
                Result(
                    req,
                    self.device,
                    error=error + _describe(exc),
                    timing=Timing(queue_ms, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, 0.0),
                ),
                device_fault=fault,
                exc=exc,
            )
        self._invoke_started = 0.0
        t2 = perf()
        try:
            output = self._postprocess(outputs, req, info)
            error = ""
        except Exception as exc:
            log.exception("%s: postprocess failed on request %s", self.name, req.id)
            output, error = None, f"postprocess failed: {_describe(exc)}"
        t3 = perf()
        timing = Timing(queue_ms, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, (t3 - t2) * 1000.0)
        return self._finish(Result(req, self.device, output, error, timing), device_fault=False)

    def _finish(
        self, result: Result, *, device_fault: bool, exc: BaseException | None = None
    ) -> bool:
        """Claim the request and answer it, unless this worker was abandoned meanwhile."""
        with self._lock:
            if self._abandoned:
                log.info(
                    "%s: discarding the late result of request %s (already handed back)",
                    self.name,
                    result.request.id,
                )
                return False
            self._in_flight = None
        self._answer(result)
        if device_fault:
            self._errors += 1
            self._consecutive_errors += 1
            log.warning("%s: %s", self.name, result.error)
            self._report("invoke_error", result.error, exc)
            return True
        if result.timing is not None:
            timing = result.timing
            ms = timing.preprocess_ms + timing.invoke_ms + timing.postprocess_ms
            self._latencies.append(ms)
            self._latency_ewma = (
                ms
                if not self._processed
                else self._latency_ewma + EWMA_ALPHA * (ms - self._latency_ewma)
            )
        self._processed += 1
        if result.error:
            self._errors += 1
        elif self._consecutive_errors:
            self._consecutive_errors = 0
            log.info("%s: invoke works again", self.name)
            self._report("recovered")
        return True
