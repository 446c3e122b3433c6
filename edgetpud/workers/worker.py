"""Workers: one assignment (a model on a device) each, served by one or more lanes.

A `ModelQueue` holds the requests waiting for one model; every worker serving that
model (one per replica) takes from it. A `Worker`'s lanes are threads, each with its
own interpreter on the worker's device, that take a request, preprocess it, invoke,
postprocess and hand the `Result` to `on_result`, all in one thread, as Coral's
threaded examples do. On an Edge TPU the service runs several lanes
(`runtime.tpu_interpreters`): the runtime queues the invokes of several interpreters
on one device, so while one lane invokes the others do their Python work and then
wait inside the library, and the device never waits for Python. What happens to the worker (opened, open failed, invoke errors,
recovery, stall, stop) goes to `on_report` as a `WorkerReport`; the service decides
what to do about it.

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
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy.typing as npt

from edgetpud import scheduler
from edgetpud.errors import EdgetpudError, ModelError, RequestError
from edgetpud.hosts.session import HostLost
from edgetpud.messages import EXPIRED, Request, Result, Timing
from edgetpud.runtime import InvokeError

log = logging.getLogger(__name__)
_SERIALS = itertools.count(1)  # Worker.serial

Overflow = Literal["block", "drop_oldest", "latest"]
OVERFLOW_POLICIES: tuple[Overflow, ...] = ("block", "drop_oldest", "latest")
ReportKind = Literal[
    "opened", "open_failed", "invoke_error", "recovered", "stalled", "host_lost", "stopped"
]
WorkerState = Literal["starting", "running", "failed", "stalled", "stopping", "stopped"]

LATENCY_WINDOW = 256  # recent requests kept for p50/p99
EWMA_ALPHA = 0.1  # weight of the newest request in the moving-average latency
GET_TIMEOUT = 0.1  # how often an idle worker looks at its stop flag
ERROR_BACKOFF_S = 0.01  # a lane pauses this long per consecutive invoke error...
ERROR_BACKOFF_MAX_S = 0.2  # ...up to this, before it takes the next request

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
    "block" makes `put` wait (up to its timeout) and return False if still full (a
    waiting producer is woken once the queue is half empty);
    "drop_oldest" drops the oldest waiting request; "latest" drops every waiting
    request and keeps only the new one (camera-like sources, where only the newest
    frame matters). Requests handed back by `requeue` (failover, stall) go first,
    are never dropped and do not count against `maxsize`.
    """

    def __init__(self, model: str, maxsize: int, overflow: Overflow = "block") -> None:
        self.model = model
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)  # lanes of idle workers wait here
        self._behind = threading.Condition(self._lock)  # lanes of workers running a request
        self._idle_waiting = 0  # lanes waiting on _not_empty
        self._not_full = threading.Condition(self._lock)
        self._items: collections.deque[Request] = collections.deque()
        self._requeued: collections.deque[Request] = collections.deque()
        self._maxsize = 1
        self._overflow: Overflow = "block"
        self.dropped = 0
        # seconds between takes while requests were waiting (EWMA): the drain rate a
        # refused client is told to wait by (retry_after_ms)
        self._gap = 0.0
        self._last_take = 0.0
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
            self._signal()
            return True

    def put_over_limit(self, req: Request) -> None:
        """Add a request at the back even when the queue is full: never dropped, never
        refused (a fleet request the broker already handed over). It counts in `depth`,
        so ordinary puts keep waiting until the queue is below maxsize again."""
        with self._lock:
            self._items.append(req)
            self._signal()

    def requeue(self, req: Request) -> None:
        """Put a request back at the very front of the queue (it is taken next): never dropped,
        ignores maxsize. To hand back several in their order, requeue them in reverse."""
        with self._lock:
            self._requeued.appendleft(req)
            self._signal()

    def retry_after_ms(self) -> int:
        """How long a refused producer should wait before trying again: the time the
        workers have lately taken to take half of what waits now (when a blocked
        producer is woken), 10 ms to 60 s; 100 ms per request before any measure."""
        with self._lock:
            gap = self._gap or 0.1
            half = max(1, (len(self._items) + len(self._requeued)) // 2)
        return int(min(60_000, max(10, math.ceil(half * gap * 1000))))

    def _took(self, waited: bool) -> None:
        """Lock held: one request taken; measure the gap only when none had to be waited for."""
        now = time.monotonic()
        if not waited and self._last_take:
            gap = now - self._last_take
            self._gap = gap if not self._gap else 0.8 * self._gap + 0.2 * gap
        self._last_take = now

    def _signal(self) -> None:
        """Wake a lane for a waiting request (lock held): an idle worker's if one waits."""
        if self._idle_waiting:
            self._not_empty.notify()
        else:
            self._behind.notify()

    def get(self, timeout: float, *, idle: bool = True) -> Request | None:
        """The next request (requeued ones first), or None after `timeout` seconds.

        `idle=False` is for a lane whose worker already runs a request: its invoke would
        queue on the device behind that one. It takes a request only when more wait than
        lanes of idle workers do, so that a request goes to an idle device first (with
        two clients and two TPUs, each TPU gets one) and the device pipeline fills only
        when every worker is busy.
        """
        with self._lock:
            if idle:
                self._idle_waiting += 1
            try:
                waited = not self._available(idle)
                if waited:
                    (self._not_empty if idle else self._behind).wait(timeout)
                if not self._available(idle):
                    return None
                self._took(waited)
                req = self._requeued.popleft() if self._requeued else self._items.popleft()
            finally:
                if idle:
                    self._idle_waiting -= 1
            if self._requeued or self._items:
                self._signal()  # pass it on: one wake-up per request, never one lost
            # A producer blocked on a full queue is woken once half the room is free,
            # not for every request taken: it then refills in one go, one wake-up
            # per maxsize/2 requests instead of one per request.
            if len(self._items) <= self._maxsize // 2:
                self._not_full.notify()
            return req

    def _available(self, idle: bool) -> bool:
        waiting = len(self._requeued) + len(self._items)
        return waiting > (0 if idle else self._idle_waiting)

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


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
    return ordered[index]


def _describe(exc: BaseException) -> str:
    """A failure as results, health, events and quarantine reasons show it.

    edgetpud's own errors already say what happened and what to do next, so their
    message is all a user reads. Anything else is unexpected (a bug here or in a
    plugin): its class name stays, because that is what a bug report needs.
    """
    text = str(exc).strip()
    if isinstance(exc, EdgetpudError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Job:
    """What a lane knows about the request it is running, for `check_stall`."""

    __slots__ = ("req", "session", "started")

    def __init__(self) -> None:
        self.req: Request | None = None
        self.started = 0.0  # time.monotonic() when its invoke began; 0.0 when none runs
        self.session: Session | None = None  # the lane's current session


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
        self._open_session = open_session
        self._preprocess = preprocess
        self._postprocess = postprocess
        self._on_result = on_result
        self._on_report = on_report
        self._stop = threading.Event()
        # Shared Edge TPUs run their invokes in runs by caching token (edgetpud/scheduler.py).
        self._gate = gates.get(device) if gates is not None and device != "cpu" else None
        self._batch_wait = batch_wait
        # _lock guards everything below that more than one thread touches. A request is
        # in _owned from the moment it leaves the queue until it is answered or handed
        # back; whoever removes it (under the lock) is the only one who may answer it.
        self._lock = threading.Lock()
        self._owned: dict[str, Request] = {}
        self._idle_lane = False  # a lane waits for a request as this idle worker's
        self._jobs = [_Job() for _ in range(interpreters)]
        self._abandoned = False  # stalled, or stopped past the deadline
        self._lost_hosts: set[int] = set()  # pids of the hosts whose death was reported
        self._reopen_failed = False
        self._lanes_left = 0
        self._state: WorkerState = "starting"
        self._threads = [
            threading.Thread(
                target=self._run_lane,
                args=(lane,),
                name=self.name if lane == 0 else f"{self.name}/{lane + 1}",
                daemon=True,
            )
            for lane in range(interpreters)
        ]
        self._heartbeat = 0.0
        self._processed = 0
        self._errors = 0
        self._consecutive_errors = 0
        self._latency_ewma = 0.0
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

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
        return self._state

    @property
    def hung(self) -> bool:
        return self._state == "stalled"

    def stop(self, deadline: float) -> list[Request]:
        """Stop taking work and let what is in flight finish until `deadline` (monotonic).

        Returns the requests it could not finish, in the order they were taken, for the
        caller to requeue (in reverse, see `ModelQueue.requeue`) or answer. Each lane
        closes its session when it ends; a lane still stuck at the deadline is abandoned
        (a daemon thread cannot block exit) and whatever it finishes later is discarded.
        """
        self._stop.set()
        with self._lock:
            if self._state not in ("stalled", "failed", "stopped"):
                self._state = "stopping"
            abandoned = self._abandoned
        if self._threads[0].ident is None:  # never started
            self._state = "stopped"
            return []
        me = threading.current_thread()
        if not abandoned:  # hung lanes are not waited for
            for thread in self._threads:
                if thread.ident is not None and thread is not me:
                    thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self._owned.values())
            self._owned.clear()
            if left:
                self._abandoned = True
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
        if not any(now - job.started > self.stall_timeout for job in self._jobs if job.started):
            return False
        with self._lock:
            if self._abandoned:
                return False
            stuck_jobs = [
                job
                for job in self._jobs
                if job.started and job.req is not None and now - job.started > self.stall_timeout
            ]
            if not stuck_jobs:
                return False
            started = min(job.started for job in stuck_jobs)
            self._abandoned = True
            self._state = "stalled"
            stuck = [job.req for job in stuck_jobs if job.req and self._owned.pop(job.req.id, None)]
            back = list(self._owned.values())
            self._owned.clear()
        self._stop.set()
        message = (
            f"invoke on {self.device} has run {now - started:.1f} s (stall_timeout "
            f"{self.stall_timeout:g} s); the device is treated as hung and its work moves elsewhere"
        )
        log.error("%s: %s", self.name, message)
        for req in reversed(back):
            self.queue.requeue(req)
        for req in reversed(stuck):
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
            in_flight=bool(self._owned),
        )

    # -- helpers shared by the lanes ------------------------------------------------------

    def _report(self, kind: ReportKind, error: str = "", exc: BaseException | None = None) -> None:
        """Hand a report to `on_report`, which must not block nor call back into this worker
        (the service's is a queue put): lanes call it with `_lock` held."""
        report = WorkerReport(
            self.name,
            self.model,
            self.device,
            kind,
            error,
            self._consecutive_errors,
            exc,
            self.serial,
        )
        try:
            self._on_report(report)
        except Exception:
            log.exception("%s: the report handler failed on %s", self.name, kind)

    def _answer(self, result: Result, ms: float = 0.0) -> None:
        """Answer a request this lane still owns; a request handed back meanwhile (stall,
        stop deadline) is not answered: whoever took it back answers it."""
        req = result.request
        with self._lock:
            if self._owned.pop(req.id, None) is None:
                log.debug(
                    "%s: discarding the late result of request %s (handed back)", self.name, req.id
                )
                return
            if result.error:
                self._errors += 1
            else:
                self._latencies.append(ms)
                if self._processed:
                    self._latency_ewma += EWMA_ALPHA * (ms - self._latency_ewma)
                else:
                    self._latency_ewma = ms
                self._processed += 1
        self._deliver(result)

    def _deliver(self, result: Result) -> None:
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
            error = f"request abandoned after {attempts} attempts, the last: {why}"
            self._deliver(Result(request=req, device=self.device, error=error))
        else:
            self.queue.requeue(dataclasses.replace(req, attempts=attempts))

    def _lane_done(self) -> None:
        """Each lane calls this last; the last one out reports "stopped"."""
        with self._lock:
            self._lanes_left -= 1
            last = self._lanes_left == 0
            abandoned = self._abandoned
        if not last:
            return
        if abandoned:
            log.info("%s: abandoned threads have ended", self.name)
            return
        if self._state != "failed":  # could not reopen after its host died: stays failed
            self._state = "stopped"
        self._report("stopped")

    def _handed_back(self, req: Request) -> bool:
        """The worker was abandoned (stall, stop deadline) or `req` was taken back: the
        lane must not run or answer it, and ends."""
        return self._abandoned or req.id not in self._owned

    # -- a lane ---------------------------------------------------------------------------

    def _open(self) -> Session:
        """A new session; a host that dies while opening it is simply tried again (the
        pool restarts it with backoff, and raises HostFailed once it keeps dying)."""
        while True:
            try:
                return self._open_session()
            except HostLost as exc:
                if self._stop.is_set():
                    raise
                log.warning("%s: %s while opening; trying again", self.name, exc.reason)

    def _run_lane(self, lane: int) -> None:
        job = self._jobs[lane]
        try:
            session = job.session = self._open()
        except Exception as exc:
            message = _describe(exc)
            if lane:
                log.warning(
                    "%s: interpreter %d of %d could not open, serving with fewer: %s",
                    self.name,
                    lane + 1,
                    len(self._threads),
                    message,
                )
                self._lane_done()
                return
            self._state = "failed"
            if isinstance(exc, EdgetpudError):
                log.error("%s: could not open: %s", self.name, message)
            else:
                log.exception("%s: could not open", self.name)
            self._report("open_failed", message, exc)
            return
        if not lane:
            self.info = session.info
            with self._lock:
                if self._state == "starting":
                    self._state = "running"
                more = [] if self._stop.is_set() else self._threads[1:]
                self._lanes_left = 1 + len(more)
            self._report("opened")
            for thread in more:
                thread.start()
        try:
            self._lane_loop(job)
        finally:
            try:
                if job.session is not None:
                    job.session.close()
            except Exception:
                log.exception("%s: closing the session failed", self.name)
            self._lane_done()

    def _lane_loop(self, job: _Job) -> None:
        session = job.session
        assert session is not None
        stop, queue, get, lock, owned = (
            self._stop,
            self.queue,
            self.queue.get,
            self._lock,
            self._owned,
        )
        info, preprocess, postprocess, invoke = (
            self.info,
            self._preprocess,
            self._postprocess,
            self._invoker(session),
        )
        device = self.device
        perf, mono = time.perf_counter, time.monotonic
        while not stop.is_set():
            self._heartbeat = mono()
            # One lane at a time waits as the worker's idle lane, and only while the worker
            # runs nothing: a request goes to an idle device before it queues behind
            # another on a busy one (ModelQueue.get).
            with lock:
                idle = not owned and not self._idle_lane
                if idle:
                    self._idle_lane = True
            req = get(GET_TIMEOUT, idle=idle)
            if req is None:
                if idle:
                    self._idle_lane = False
                continue
            now = mono()
            queue_ms = (now - req.received_mono) * 1000.0
            if req.deadline and now > req.deadline:  # its client has given up: not run
                if idle:
                    self._idle_lane = False
                self._deliver(
                    Result(req, device, error=f"{EXPIRED}: waited {queue_ms:.0f} ms, past its "
                           "client's timeout; not run", timing=Timing(queue_ms, 0.0, 0.0, 0.0))
                )  # fmt: skip
                continue
            with lock:
                if idle:  # owned before it is given up: no other lane waits as idle meanwhile
                    self._idle_lane = False
                if stop.is_set():  # stopped while waiting: hand it back untouched
                    queue.requeue(req)
                    return
                owned[req.id] = req
            t0 = perf()
            try:
                inputs = preprocess(req, info)
            except Exception as exc:
                if not isinstance(exc, RequestError):
                    log.exception("%s: preprocess failed on request %s", self.name, req.id)
                pre_ms = (perf() - t0) * 1000.0
                self._answer(
                    Result(req, device, error=f"bad request: {_describe(exc)}",
                           timing=Timing(queue_ms, pre_ms, 0.0, 0.0))
                )  # fmt: skip
                continue
            t1 = perf()
            if self._handed_back(req):  # handed back meanwhile
                return
            job.req = req
            job.started = mono()
            try:
                outputs = invoke(inputs)
            except HostLost as exc:
                job.started = 0.0
                job.req = None
                if self._handed_back(req):
                    return
                self._host_lost(req, exc)
                session = self._reopen(job)
                if session is None:
                    return
                invoke = self._invoker(session)
                continue
            except Exception as exc:
                job.started = 0.0
                job.req = None
                if self._handed_back(req):
                    return
                self._invoke_failed(req, exc, queue_ms, (t1 - t0) * 1000.0, (perf() - t1) * 1000.0)
                continue
            t2 = perf()
            job.started = 0.0
            job.req = None
            if self._handed_back(req):
                return  # stalled: the request was handed back, this result is discarded
            if self._consecutive_errors:
                with lock:  # reported under the lock: reports leave in the order of the count
                    if self._consecutive_errors:
                        self._consecutive_errors = 0
                        log.info("%s: invoke works again", self.name)
                        self._report("recovered")
            try:
                output = postprocess(outputs, req, info)
                error = ""
            except RequestError as exc:  # this request's outputs: answered, no traceback
                log.warning("%s: postprocess failed on request %s: %s", self.name, req.id, exc)
                output, error = None, f"postprocess failed: {_describe(exc)}"
            except Exception as exc:
                log.exception("%s: postprocess failed on request %s", self.name, req.id)
                output, error = None, f"postprocess failed: {_describe(exc)}"
            t3 = perf()
            timing = Timing(queue_ms, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, (t3 - t2) * 1000.0)
            self._answer(Result(req, device, output, error, timing), (t3 - t0) * 1000.0)

    def _invoker(self, session: Session) -> Callable[[Sequence[Array]], list[Array]]:
        """The session's invoke, in this model's turn on its device (edgetpud/scheduler.py)."""
        gate = self._gate
        if gate is None:
            return session.invoke
        key, wait, invoke = (
            scheduler.key_for(self.info, self.model),
            self._batch_wait,
            session.invoke,
        )
        return lambda inputs: gate.run(key, wait, invoke, inputs)

    def _host_lost(self, req: Request, exc: HostLost) -> None:
        """The device's host died under this lane: hand the request back to the front of the
        queue (an attempt only if it was inside the host: it may be what killed it)."""
        with self._lock:
            taken = self._owned.pop(req.id, None) is not None
            first = exc.pid not in self._lost_hosts
            self._lost_hosts.add(exc.pid)
        if taken:
            if exc.sent:
                self._hand_back(req, exc.reason)
            else:
                self.queue.requeue(req)
        if first:
            log.error("%s: %s; its requests go back to the queue", self.name, exc.reason)
            self._report("host_lost", exc.reason, exc)

    def _reopen(self, job: _Job) -> Session | None:
        """After a host died: close the dead session and open one in the new host. None when
        that fails (reported once per worker as "open_failed", and the worker ends) or the
        worker is stopping."""
        old, job.session = job.session, None
        if old is not None:
            try:
                old.close()
            except Exception:
                log.exception("%s: closing the session failed", self.name)
        if self._stop.is_set():
            return None
        try:
            job.session = self._open()
        except Exception as exc:
            with self._lock:
                first = not self._reopen_failed and not self._abandoned
                self._reopen_failed = True
                if first:
                    self._state = "failed"
            self._stop.set()
            if first:
                message = _describe(exc)
                log.error("%s: could not reopen after its host died: %s", self.name, message)
                self._report("open_failed", message, exc)
            return None
        if self._stop.is_set():
            return None
        log.info("%s: reopened in a new host", self.name)
        return job.session

    def _invoke_failed(
        self, req: Request, exc: BaseException, queue_ms: float, pre_ms: float, invoke_ms: float
    ) -> None:
        # A ModelError other than InvokeError means these inputs do not fit the model (a
        # preprocessor's bug or a bad tensor request), not that the device failed.
        fault = isinstance(exc, InvokeError) or not isinstance(exc, ModelError)
        prefix = f"invoke failed on {self.device}: " if fault else "bad request: "
        error = prefix + _describe(exc)
        self._answer(
            Result(req, self.device, error=error, timing=Timing(queue_ms, pre_ms, invoke_ms, 0.0))
        )
        if fault:
            log.warning("%s: %s", self.name, error)
            with self._lock:
                self._consecutive_errors += 1
                count = self._consecutive_errors
                # Under the lock, so that whichever lane failed, reports leave in the order
                # of the count and the service sees exactly its quarantine_after-th error.
                self._report("invoke_error", error, exc)
            # A failing device answers at once: without a pause its lanes would fail a
            # whole queue of requests before the service can quarantine it.
            self._stop.wait(min(ERROR_BACKOFF_S * count, ERROR_BACKOFF_MAX_S))
