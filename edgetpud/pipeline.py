"""Pipelined models: a model split into segments, each segment on its own Edge TPU.

Coral's partitioner (`edgetpu_compiler --num_segments N`) splits a model that is too
big for one TPU's 8 MiB of parameter memory, or too slow, into N `_segment_k_of_N`
models: segment k's outputs are segment k+1's inputs, matched by tensor name. Like
pycoral's `PipelinedModelRunner`, a `PipelineSession` runs one thread per segment,
each with its own interpreter (a `Session`) on its own device, joined by bounded
queues: while segment 1 works on request n, segment 0 already works on request n+1,
so N TPUs serve up to N times the requests of one. Requests leave in the order they
came in (each stage is one thread taking its queue in order).

To a worker, a pipeline is one `Session`: `invoke(inputs)` takes the first segment's
inputs and returns the last segment's outputs; several lanes calling it at once keep
every stage busy. `stats()` gives each stage's count, rate and latency (health).
Segments may share a device (fewer TPUs than segments): their stages then take turns
on it, and unless the segments were compiled together (Coral's partitioner gives
them one caching token) and fit its memory together, each turn reloads parameters.

No TFLite import here: the sessions come from `edgetpud.runtime` (or a device host).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgetpud.errors import ModelError
from edgetpud.hosts.session import HostLost

log = logging.getLogger(__name__)

TARGET_SEPARATOR = "+"  # a pipeline's worker runs on "usb:2-1+usb:2-2": its stages' devices

_WINDOW = 256  # latencies kept per stage for its percentiles


class _Job:
    __slots__ = ("done", "error", "seq", "tensors")

    def __init__(self, seq: int, tensors: dict[str, Any]) -> None:
        self.seq = seq  # order of arrival: every stage hands jobs on in this order
        self.tensors = tensors  # name -> array: the next segment's inputs, at the end the outputs
        self.error: BaseException | None = None
        self.done = threading.Event()


@dataclass(frozen=True)
class StageStats:
    """One stage of a pipeline, for health: its device and what it has done."""

    segment: int
    device: str
    invokes: int
    rate_per_s: float  # invokes per second over the last ones
    latency_ms_p50: float
    latency_ms_p99: float
    queued: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Stage:
    """One segment: its interpreters (each in a thread of its own, all on one device, so
    the device never waits for the Python around an invoke) take jobs from one queue;
    finished jobs are handed on in the order they came."""

    def __init__(self, index: int, sessions: Sequence[Any]) -> None:
        self.index = index
        self.sessions = list(sessions)
        self.inbox: queue.Queue[_Job | None] = queue.Queue()
        self.next: _Stage | None = None  # None: the last stage
        info = self.sessions[0].info
        self.names_in = [t.name for t in info.inputs]
        self.names_out = [t.name for t in info.outputs]
        self.lock = threading.Lock()
        self.ready: dict[int, _Job] = {}  # finished, waiting for an earlier job
        self.expect = 0  # the seq to hand on next
        self.invokes = 0
        self.ends: deque[float] = deque(maxlen=_WINDOW)  # monotonic times invokes ended
        self.latencies: deque[float] = deque(maxlen=_WINDOW)  # ms per invoke

    def run(self, session: Any) -> None:
        invoke, names_in, names_out = session.invoke, self.names_in, self.names_out
        while True:
            job = self.inbox.get()
            if job is None:
                return
            if job.error is None:
                try:
                    inputs = [job.tensors[n] for n in names_in]
                except KeyError as exc:
                    job.error = ModelError(
                        f"segment {self.index} wants input tensor {exc.args[0]!r}, which the "
                        "segment before it does not output; give the segments of one "
                        "partitioner run, in order"
                    )
                else:
                    t0 = time.monotonic()
                    try:
                        outputs = invoke(inputs)
                    except BaseException as exc:  # the caller sees it, as from a Session
                        job.error = exc
                    else:
                        t1 = time.monotonic()
                        job.tensors = dict(zip(names_out, outputs, strict=True))
                        with self.lock:
                            self.invokes += 1
                            self.ends.append(t1)
                            self.latencies.append((t1 - t0) * 1000.0)
            self.hand_on(job)

    def hand_on(self, job: _Job) -> None:
        """Pass finished jobs to the next stage (or their callers), in arrival order."""
        with self.lock:
            self.ready[job.seq] = job
            out = []
            while self.expect in self.ready:
                out.append(self.ready.pop(self.expect))
                self.expect += 1
            for done in out:  # under the lock, so that the next stage gets them in order
                if self.next is None or done.error is not None:
                    if self.next is not None:
                        self.next.skip(done.seq)
                    done.done.set()
                else:
                    self.next.inbox.put(done)

    def skip(self, seq: int) -> None:
        """A job that failed upstream will not come: later ones need not wait for it."""
        with self.lock:
            self.ready[seq] = _SKIPPED
            out = []
            while self.expect in self.ready:
                at = self.expect
                job = self.ready.pop(at)
                self.expect += 1
                if job is not _SKIPPED:
                    out.append(job)
                elif self.next is not None:
                    self.next.skip(at)
            for done in out:
                if self.next is None or done.error is not None:
                    done.done.set()
                else:
                    self.next.inbox.put(done)

    def stats(self) -> StageStats:
        with self.lock:
            ends, lat, count = list(self.ends), sorted(self.latencies), self.invokes
        span = ends[-1] - ends[0] if len(ends) > 1 else 0.0
        rate = (len(ends) - 1) / span if span > 0 else 0.0

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else 0.0

        return StageStats(
            self.index,
            str(getattr(self.sessions[0], "device", "")),
            count,
            round(rate, 1),
            pct(0.5),
            pct(0.99),
            self.inbox.qsize(),
        )


_SKIPPED = _Job(-1, {})


class PipelineSession:
    """Segments (in order), each with one or more sessions on one device, run as one
    pipelined Session. `segments[k]` is a list of sessions of segment k (one per
    interpreter), or a single session."""

    def __init__(self, segments: Sequence[Any], *, name: str = "") -> None:
        if not segments:
            raise ValueError("a pipeline needs at least one segment")
        groups = [list(g) if isinstance(g, (list, tuple)) else [g] for g in segments]
        self.sessions = [s for g in groups for s in g]
        first, last = groups[0][0].info, groups[-1][0].info
        self.info: Any = dataclasses.replace(first, outputs=last.outputs)
        self.device = "+".join(str(getattr(g[0], "device", "?")) for g in groups)
        self._check_links([g[0] for g in groups])
        self._stages = [_Stage(i, g) for i, g in enumerate(groups)]
        for stage, nxt in zip(self._stages, self._stages[1:], strict=False):
            stage.next = nxt
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._closed = False
        label = name or self.device
        self._threads = [
            threading.Thread(
                target=stage.run, args=(session,), name=f"stage:{label}/{stage.index}", daemon=True
            )
            for stage in self._stages
            for session in stage.sessions
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _check_links(sessions: Sequence[Any]) -> None:
        for k, (a, b) in enumerate(zip(sessions, sessions[1:], strict=False)):
            made = {t.name for t in a.info.outputs}
            missing = [t.name for t in b.info.inputs if t.name not in made]
            if missing:
                raise ModelError(
                    f"segment {k + 1} wants input tensor(s) {', '.join(map(repr, missing))} "
                    f"that segment {k} does not output: list the segments of one partitioner "
                    "run, in order (…_segment_0_of_N first)"
                )

    def invoke(self, inputs: Sequence[Any]) -> list[Any]:
        """The last segment's outputs for the first segment's `inputs` (blocks until done)."""
        names = self._stages[0].names_in
        if len(inputs) != len(names):
            raise ModelError(f"the first segment takes {len(names)} input(s), got {len(inputs)}")
        with self._seq_lock:
            if self._closed:
                raise ModelError("this pipeline is closed")
            job = _Job(self._seq, dict(zip(names, inputs, strict=True)))
            self._seq += 1
            self._stages[0].inbox.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return [job.tensors[n] for n in self._stages[-1].names_out]

    def stats(self) -> list[StageStats]:
        return [s.stats() for s in self._stages]

    def close(self) -> None:
        """Stop the stage threads and close every segment's session; a request still in
        the pipeline is answered with an error (its worker hands it on as failed)."""
        with self._seq_lock:
            if self._closed:
                return
            self._closed = True
        for stage in self._stages:
            for _ in stage.sessions:
                stage.inbox.put(None)
        for t in self._threads:
            t.join(timeout=30)
        for stage in self._stages:
            while True:
                try:
                    job = stage.inbox.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.error = ModelError("the pipeline closed before this request finished")
                    job.done.set()
        for s in self.sessions:
            try:
                s.close()
            except Exception:
                log.exception("closing a pipeline segment's session failed")


def stage_devices(segments: int, devices: Sequence[str]) -> list[str]:
    """Which device runs each segment: one each while devices last; with fewer devices
    than segments, consecutive segments share one (a segment's outputs then stay on
    the device they were made on for the next one whenever possible)."""
    if not devices:
        raise ValueError("no device for the pipeline")
    return [devices[k * len(devices) // segments] for k in range(segments)]


def open_pipeline(
    paths: Sequence[Any],
    devices: Sequence[str],
    opener: Callable[[Any, str], Any],
    *,
    interpreters: int = 2,
) -> PipelineSession:
    """Open segment k of `paths` on `stage_devices(...)[k]` with `opener(path, device)`,
    `interpreters` times each, and run them as a pipeline; sessions opened before a
    failure are closed."""
    opened: list[Any] = []
    try:
        groups = []
        for path, device in zip(paths, stage_devices(len(paths), devices), strict=True):
            group = []
            for _ in range(max(interpreters, 1)):
                group.append(opener(path, device))
                opened.append(group[-1])
            groups.append(group)
        return PipelineSession(groups)
    except BaseException:
        for s in opened:
            try:
                s.close()
            except Exception:
                log.exception("closing a pipeline segment's session failed")
        raise


class SharedPipeline:
    """One pipeline for all the lanes of a worker: each lane's `open()` gets a handle to
    it (opening it on the first call). When an invoke finds a stage's device host gone
    (HostLost), the pipeline is stale: the lanes' reopens get a new one, and the old one
    closes with its last handle."""

    def __init__(self, make: Callable[[], PipelineSession]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._pipe: PipelineSession | None = None
        self._handles: dict[int, int] = {}  # id(pipeline) -> open handles

    def open(self) -> _Handle:
        with self._lock:
            if self._pipe is None:
                self._pipe = self._make()
                self._handles[id(self._pipe)] = 0
            self._handles[id(self._pipe)] += 1
            return _Handle(self, self._pipe)

    def stats(self) -> list[StageStats]:
        with self._lock:
            pipe = self._pipe
        return pipe.stats() if pipe is not None else []

    def _stale(self, pipe: PipelineSession) -> None:
        with self._lock:
            if pipe is self._pipe:
                self._pipe = None

    def _release(self, pipe: PipelineSession) -> None:
        """A lane closed its handle: the pipeline closes with its last one (the worker
        stopped, or every lane moved on to a new pipeline)."""
        with self._lock:
            self._handles[id(pipe)] -= 1
            if self._handles[id(pipe)]:
                return
            del self._handles[id(pipe)]
            if pipe is self._pipe:
                self._pipe = None
        pipe.close()


class _Handle:
    """A lane's view of a shared pipeline: a Session."""

    def __init__(self, owner: SharedPipeline, pipe: PipelineSession) -> None:
        self._owner, self._pipe = owner, pipe
        self.info = pipe.info
        self.device = pipe.device
        self._closed = False

    def invoke(self, inputs: Sequence[Any]) -> list[Any]:
        try:
            return self._pipe.invoke(inputs)
        except HostLost:
            self._owner._stale(self._pipe)
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._owner._release(self._pipe)
