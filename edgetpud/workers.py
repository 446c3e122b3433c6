"""Workers: one assignment (a model on a device) each, with one interpreter in one thread.

A `ModelQueue` holds the requests waiting for one model; every worker serving that
model (one per replica) takes from it. A `Worker`'s interpreter thread
(`worker:<model>@<device>`) opens the session itself and then does nothing but
invoke; two helper threads take requests from the queue and preprocess them
(`…/pre`) and postprocess the outputs and hand each `Result` to `on_result`
(`…/post`), so the device never waits for Python work. What happens to the worker
(opened, open failed, invoke errors, recovery, stall, stop) goes to `on_report` as
a `WorkerReport`; the service decides what to do about it.

Nothing is lost: every request a worker takes from the queue is either answered
(a Result, possibly with `error` set) or handed back (requeued at the front of
its queue on a stall, or returned from `stop()` when the drain deadline passes).
A request is never answered twice: whoever removes it from the worker's owned set
(under a lock) is the only one who may answer it, so a late result from an
abandoned thread is discarded.

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
POST_BACKLOG = 4  # invoked requests that may wait for postprocessing before the device waits

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

    def put_over_limit(self, req: Request) -> None:
        """Add a request at the back even when the queue is full: never dropped, never
        refused (a fleet request the broker already handed over). It counts in `depth`,
        so ordinary puts keep waiting until the queue is below maxsize again."""
        with self._lock:
            self._items.append(req)
            self._not_empty.notify()

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


class _Job:
    """One request on its way through a worker's pipeline."""

    __slots__ = ("inputs", "invoke_ms", "outputs", "pre_ms", "prepared", "queue_ms", "req")

    def __init__(self, req: Request, queue_ms: float, pre_ms: float, inputs: list[Array]) -> None:
        self.req = req
        self.queue_ms = queue_ms
        self.pre_ms = pre_ms
        self.inputs = inputs
        self.prepared = time.perf_counter()
        self.outputs: list[Array] = []
        self.invoke_ms = 0.0


class Worker:
    """One assignment: one model on one device, one interpreter, owned by one thread.

    The thread named `worker:<model>@<device>` opens the session itself (opening can
    take seconds: firmware upload, parameter transfer) and is the only one that ever
    touches it. Once open, two helper threads (`…/pre`, `…/post`) take requests from
    the queue and preprocess them, and postprocess results, so that the device is
    never idle while Python decodes an image or encodes a result: the interpreter
    thread does nothing but invoke, and one prepared request waits for it.
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
        self.info: Any = None  # the session's ModelInfo once opened
        self._open_session = open_session
        self._preprocess = preprocess
        self._postprocess = postprocess
        self._on_result = on_result
        self._on_report = on_report
        self._stop = threading.Event()
        # _lock guards everything below that more than one thread touches. A request is
        # in _owned from the moment it leaves the queue until it is answered or handed
        # back; whoever removes it (under the lock) is the only one who may answer it.
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        self._slot_full = threading.Condition(self._lock)
        self._post_ready = threading.Condition(self._lock)
        self._post_room = threading.Condition(self._lock)
        self._owned: dict[str, Request] = {}
        self._ready: _Job | None = None  # preprocessed, waiting for the interpreter
        self._post: collections.deque[_Job] = collections.deque()
        self._invoking: Request | None = None
        self._invoke_started = 0.0  # time.monotonic(); 0.0 when no invoke is running
        self._abandoned = False  # stalled, or stopped past the deadline
        self._pre_done = False
        self._invoke_done = False
        self._threads_left = 0
        self._state: WorkerState = "starting"
        self._thread = threading.Thread(target=self._run_invoke, name=self.name, daemon=True)
        self._pre_thread = threading.Thread(
            target=self._run_pre, name=f"{self.name}/pre", daemon=True
        )
        self._post_thread = threading.Thread(
            target=self._run_post, name=f"{self.name}/post", daemon=True
        )
        self._heartbeat = 0.0
        self._processed = 0
        self._pre_errors = 0
        self._invoke_errors = 0
        self._post_errors = 0
        self._consecutive_errors = 0
        self._latency_ewma = 0.0
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    # -- control, from the service thread -------------------------------------------------

    def start(self) -> None:
        """Start the thread; it opens the session, reports "opened" or "open_failed", then serves."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in (self._thread, self._pre_thread, self._post_thread))

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def hung(self) -> bool:
        return self._state == "stalled"

    def stop(self, deadline: float) -> list[Request]:
        """Stop taking work and let what is in flight finish until `deadline` (monotonic).

        Returns the requests it could not finish, in the order they were taken, for the
        caller to requeue (in reverse, see `ModelQueue.requeue`) or answer. The
        interpreter thread closes its session when it ends; a thread still stuck at
        the deadline is abandoned (a daemon thread cannot block exit) and whatever it
        finishes later is discarded.
        """
        self._stop.set()
        with self._lock:
            if self._state not in ("stalled", "failed", "stopped"):
                self._state = "stopping"
            abandoned = self._abandoned
            self._wake_all()
        if self._thread.ident is None:  # never started
            self._state = "stopped"
            return []
        me = threading.current_thread()
        threads: tuple[threading.Thread, ...] = (self._pre_thread, self._post_thread)
        if not abandoned:  # a hung interpreter thread is not waited for
            threads = (self._pre_thread, self._thread, self._post_thread)
        for thread in threads:
            if thread.ident is not None and thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self._owned.values())
            self._owned.clear()
            if left:
                self._abandoned = True
                self._wake_all()
        if left:
            log.warning(
                "%s did not finish %d request(s) before the stop deadline; handing them back",
                self.name,
                len(left),
            )
        return left

    def check_stall(self, now: float) -> bool:
        """Called by the service each tick. An invoke running past `stall_timeout` marks this
        worker hung: its request goes back to the front of the queue (attempts + 1) ahead
        of the requests the worker had taken but not yet run, a "stalled" report goes
        out, and the interpreter thread is abandoned. True only on that transition."""
        started = self._invoke_started
        if not started or now - started <= self.stall_timeout:
            return False
        with self._lock:
            started = self._invoke_started
            if self._abandoned or not started or now - started <= self.stall_timeout:
                return False
            self._abandoned = True
            self._state = "stalled"
            stuck = self._invoking
            if stuck is not None and self._owned.pop(stuck.id, None) is None:
                stuck = None
            # Requests already invoked stay with the postprocessing thread, which answers them.
            invoked = {job.req.id for job in self._post}
            back = [req for key, req in self._owned.items() if key not in invoked]
            for req in back:
                del self._owned[req.id]
            self._wake_all()
        self._stop.set()
        waited = now - started
        message = (
            f"invoke on {self.device} has run {waited:.1f} s (stall_timeout "
            f"{self.stall_timeout:g} s); the device is treated as hung and its work moves elsewhere"
        )
        log.error("%s: %s", self.name, message)
        for req in reversed(back):
            self.queue.requeue(req)
        if stuck is not None:
            self._hand_back(stuck, message)
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
            errors=self._pre_errors + self._invoke_errors + self._post_errors,
            consecutive_errors=self._consecutive_errors,
            latency_ms=self._latency_ewma,
            p50_ms=_percentile(ordered, 0.50),
            p99_ms=_percentile(ordered, 0.99),
            in_flight=bool(self._owned),
        )

    # -- helpers shared by the threads ----------------------------------------------------

    def _wake_all(self) -> None:
        """With _lock held: wake every waiting stage so it re-reads the flags."""
        self._slot_free.notify_all()
        self._slot_full.notify_all()
        self._post_ready.notify_all()
        self._post_room.notify_all()

    def _report(self, kind: ReportKind, error: str = "", exc: BaseException | None = None) -> None:
        report = WorkerReport(
            self.name, self.model, self.device, kind, error, self._consecutive_errors, exc
        )
        try:
            self._on_report(report)
        except Exception:
            log.exception("%s: the report handler failed on %s", self.name, kind)

    def _claim(self, req: Request) -> bool:
        """Take the right to answer `req`; False if it was handed back meanwhile."""
        with self._lock:
            if self._owned.pop(req.id, None) is not None:
                return True
        log.debug("%s: discarding the late result of request %s (handed back)", self.name, req.id)
        return False

    def _answer(self, result: Result) -> None:
        try:
            self._on_result(result)
        except Exception:
            log.exception(
                "%s: the result handler failed on request %s", self.name, result.request.id
            )

    def _hand_back(self, req: Request, why: str) -> None:
        """Requeue a stalled request for another worker, or answer it if it has had its tries."""
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

    def _thread_done(self) -> None:
        """Each pipeline thread calls this last; the last one out reports "stopped"."""
        with self._lock:
            self._threads_left -= 1
            last = self._threads_left == 0
            abandoned = self._abandoned
        if not last:
            return
        if abandoned:
            log.info("%s: abandoned threads have ended", self.name)
            return
        self._state = "stopped"
        self._report("stopped")

    # -- the interpreter thread -----------------------------------------------------------

    def _run_invoke(self) -> None:
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
        with self._lock:
            if self._state == "starting":
                self._state = "running"
            self._threads_left = 3
        self._report("opened")
        self._pre_thread.start()
        self._post_thread.start()
        try:
            self._invoke_loop(session)
        finally:
            try:
                session.close()
            except Exception:
                log.exception("%s: closing the session failed", self.name)
            with self._lock:
                self._invoke_done = True
                self._wake_all()
            self._thread_done()

    def _invoke_loop(self, session: Session) -> None:
        lock, slot_free, slot_full = self._lock, self._slot_free, self._slot_full
        post_ready, post_room = self._post_ready, self._post_room
        owned, post = self._owned, self._post
        invoke = session.invoke
        perf, mono = time.perf_counter, time.monotonic
        while True:
            with lock:
                while self._ready is None:
                    if self._pre_done or self._abandoned:
                        return
                    slot_full.wait(GET_TIMEOUT)
                job, self._ready = self._ready, None
                slot_free.notify()
                req = job.req
                if req.id not in owned:  # handed back at a stop deadline
                    continue
                self._invoking = req
                self._invoke_started = mono()
            t1 = perf()
            try:
                outputs = invoke(job.inputs)
            except Exception as exc:
                t2 = perf()
                with lock:
                    self._invoke_started = 0.0
                    self._invoking = None
                    if self._abandoned:
                        return
                self._invoke_failed(job, exc, t1, t2)
                continue
            t2 = perf()
            with lock:
                self._invoke_started = 0.0
                self._invoking = None
                if self._abandoned:
                    return  # stalled: the request was handed back, this result is discarded
                # Postprocessing that falls behind slows the device down instead of
                # piling up outputs.
                while len(post) >= POST_BACKLOG and not self._abandoned:
                    post_room.wait(GET_TIMEOUT)
                if req.id in owned:
                    job.queue_ms += (t1 - job.prepared) * 1000.0
                    job.outputs = outputs
                    job.invoke_ms = (t2 - t1) * 1000.0
                    job.prepared = t2
                    post.append(job)
                    post_ready.notify()
            self._heartbeat = mono()
            if self._consecutive_errors:
                self._consecutive_errors = 0
                log.info("%s: invoke works again", self.name)
                self._report("recovered")

    def _invoke_failed(self, job: _Job, exc: BaseException, t1: float, t2: float) -> None:
        # A ModelError other than InvokeError means these inputs do not fit the model (a
        # preprocessor's bug or a bad tensor request), not that the device failed.
        fault = isinstance(exc, InvokeError) or not isinstance(exc, ModelError)
        prefix = f"invoke failed on {self.device}: " if fault else "bad request: "
        result = Result(
            job.req,
            self.device,
            error=prefix + _describe(exc),
            timing=Timing(
                job.queue_ms + (t1 - job.prepared) * 1000.0, job.pre_ms, (t2 - t1) * 1000.0, 0.0
            ),
        )
        self._invoke_errors += 1
        if self._claim(job.req):
            self._answer(result)
        if fault:
            self._consecutive_errors += 1
            log.warning("%s: %s", self.name, result.error)
            self._report("invoke_error", result.error, exc)

    # -- the preprocessing thread ---------------------------------------------------------

    def _run_pre(self) -> None:
        try:
            self._pre_loop()
        finally:
            with self._lock:
                self._pre_done = True
                self._wake_all()
            self._thread_done()

    def _pre_loop(self) -> None:
        stop, queue, get = self._stop, self.queue, self.queue.get
        lock, slot_free, slot_full = self._lock, self._slot_free, self._slot_full
        owned, info, preprocess = self._owned, self.info, self._preprocess
        perf, mono = time.perf_counter, time.monotonic
        while not stop.is_set():
            try:
                self._heartbeat = mono()
                # Take the next request only once the interpreter has taken the last one:
                # preprocessing overlaps an invoke, and no more is held than needed.
                if self._ready is not None:
                    with lock:
                        if self._ready is not None and not self._abandoned:
                            slot_free.wait(GET_TIMEOUT)
                    continue
                req = get(GET_TIMEOUT)
                if req is None:
                    continue
                queue_ms = (mono() - req.received_mono) * 1000.0
                with lock:
                    if stop.is_set():  # stopped while waiting: hand it back untouched
                        queue.requeue(req)
                        return
                    owned[req.id] = req
                t0 = perf()
                try:
                    inputs = preprocess(req, info)
                except Exception as exc:
                    self._pre_failed(req, exc, queue_ms, (perf() - t0) * 1000.0)
                    continue
                job = _Job(req, queue_ms, (perf() - t0) * 1000.0, inputs)
                with lock:
                    while self._slot_taken():
                        slot_free.wait(GET_TIMEOUT)
                    if req.id not in owned:  # handed back meanwhile
                        return
                    if self._abandoned or self._invoke_done:  # nobody left to run it
                        del owned[req.id]
                        queue.requeue(req)
                        return
                    self._ready = job
                    slot_full.notify()
            except Exception:
                log.exception(
                    "%s: unexpected error while preparing a request; carrying on", self.name
                )

    def _slot_taken(self) -> bool:
        """With _lock held: a prepared request waits and the interpreter thread will take it."""
        return self._ready is not None and not self._abandoned and not self._invoke_done

    def _pre_failed(self, req: Request, exc: BaseException, queue_ms: float, pre_ms: float) -> None:
        if not isinstance(exc, RequestError):
            log.exception("%s: preprocess failed on request %s", self.name, req.id)
        self._pre_errors += 1
        if self._claim(req):
            self._answer(
                Result(
                    req,
                    self.device,
                    error=f"bad request: {_describe(exc)}",
                    timing=Timing(queue_ms, pre_ms, 0.0, 0.0),
                )
            )

    # -- the postprocessing thread --------------------------------------------------------

    def _run_post(self) -> None:
        try:
            self._post_loop()
        finally:
            self._thread_done()

    def _post_loop(self) -> None:
        lock, post_ready, post_room, post = (
            self._lock,
            self._post_ready,
            self._post_room,
            self._post,
        )
        owned, info, postprocess, device = self._owned, self.info, self._postprocess, self.device
        latencies = self._latencies
        perf = time.perf_counter
        while True:
            try:
                with lock:
                    while not post:
                        if self._invoke_done or self._abandoned:
                            return
                        post_ready.wait(GET_TIMEOUT)
                    job = post.popleft()
                    post_room.notify()
                req = job.req
                t2 = job.prepared
                try:
                    output = postprocess(job.outputs, req, info)
                    error = ""
                except Exception as exc:
                    log.exception("%s: postprocess failed on request %s", self.name, req.id)
                    output, error = None, f"postprocess failed: {_describe(exc)}"
                    self._post_errors += 1
                post_ms = (perf() - t2) * 1000.0
                with lock:
                    mine = owned.pop(req.id, None) is not None
                if not mine:
                    continue
                self._answer(
                    Result(
                        req,
                        device,
                        output,
                        error,
                        Timing(job.queue_ms, job.pre_ms, job.invoke_ms, post_ms),
                    )
                )
                ms = job.pre_ms + job.invoke_ms + post_ms
                latencies.append(ms)
                if self._processed:
                    self._latency_ewma += EWMA_ALPHA * (ms - self._latency_ewma)
                else:
                    self._latency_ewma = ms
                self._processed += 1
            except Exception:
                log.exception(
                    "%s: unexpected error while finishing a request; carrying on", self.name
                )
