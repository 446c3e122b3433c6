"""Shared Edge TPUs, scheduled: a device's invokes in runs grouped by caching token.

An Edge TPU keeps the parameters of the model it ran last in its on-chip memory;
an invoke of a model with another parameter caching token reloads them (about
9 ms for a MobileNet over USB, against 2.6 ms for the inference). Left alone, the
invokes of two models sharing a TPU reach the device in whatever order their lanes
queue them, and that order settles into anything from runs of four to strict
alternation: 2 to 8 reloads per 8 invokes (docs/benchmarks.md).

A `DeviceGate` puts one device's invokes in runs. A lane acquires the gate with its
key (the model's caching token; models compiled together share one) and its
latency budget (`max_batch_wait`) before it invokes, and releases it after. While a
key holds the device, more invokes of that key go in (several may be in flight, so
the device never waits for Python). Another key takes over when the current key has
none waiting, or as soon as its own oldest waiter has waited its budget since the
current run began; then no new invoke of the current key goes in, those in flight
finish, and the next run starts. Each reload is paid once per run, and no request
waits on another key's run longer than its budget (plus the invokes in flight).

Pure apart from a lock and a condition variable: no I/O, the clock is a parameter.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
A = TypeVar("A")

DEFAULT_BATCH_WAIT = 0.05  # seconds: runtime default for a model's max_batch_wait
POLL_S = 0.1  # a waiting lane looks at its stop flag this often


@dataclass
class _Waiter:
    since: float  # when it began to wait
    budget: float  # how long another key's run may keep it waiting


@dataclass(frozen=True)
class GateStats:
    """What a gate has done: `runs` counts the times the device changed key, so at most
    that many parameter reloads were caused by sharing; `invokes` the invokes let in."""

    runs: int
    invokes: int
    current: Hashable | None
    waiting: int


class DeviceGate:
    """The gate in front of one Edge TPU. See the module docstring for the rule."""

    def __init__(self, device: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self._clock = clock
        self._cond = threading.Condition()
        self._current: Hashable | None = None
        self._holders = 0
        self._run_start = 0.0
        self._waiting: dict[Hashable, deque[_Waiter]] = {}
        self._runs = 0
        self._invokes = 0

    def acquire(self, key: Hashable, budget: float, stop: threading.Event | None = None) -> bool:
        """Wait for the device's turn for `key`; False (without it) when `stop` is set."""
        me = _Waiter(self._clock(), max(budget, 0.0))
        with self._cond:
            queue = self._waiting.setdefault(key, deque())
            queue.append(me)
            try:
                while not self._may_enter(key, me):
                    if stop is not None and stop.is_set():
                        self._leave(key, me)
                        return False
                    self._cond.wait(self._timeout())
            except BaseException:
                self._leave(key, me)
                raise
            queue.popleft()
            if not queue:
                del self._waiting[key]
            if key != self._current:
                self._current = key
                self._run_start = self._clock()
                self._runs += 1
            self._holders += 1
            self._invokes += 1
            self._cond.notify_all()  # the next waiter of this key may go in too
            return True

    def _leave(self, key: Hashable, me: _Waiter) -> None:
        queue = self._waiting[key]
        queue.remove(me)
        if not queue:
            del self._waiting[key]
        self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._holders -= 1
            self._cond.notify_all()

    def run(self, key: Hashable, budget: float, fn: Callable[[A], T], arg: A) -> T:
        """`fn(arg)` in `key`'s turn (the workers' hook around an invoke)."""
        self.acquire(key, budget)
        try:
            return fn(arg)
        finally:
            self.release()

    def stats(self) -> GateStats:
        with self._cond:
            waiting = sum(len(q) for q in self._waiting.values())
            return GateStats(self._runs, self._invokes, self._current, waiting)

    # -- the rule, under the lock ---------------------------------------------------------

    def _may_enter(self, key: Hashable, me: _Waiter) -> bool:
        if self._waiting[key][0] is not me:
            return False  # a key's invokes go in in the order they came
        due = self._due()
        if key == self._current:
            return due is None
        if self._holders:
            return False
        if due is not None:
            return key == due
        if self._current in self._waiting:
            return False  # the current key still has invokes waiting, none overdue
        return key == self._oldest()

    def _due(self) -> Hashable | None:
        """Another key whose oldest waiter has waited its budget since the current run
        began (the earliest such deadline first), or None."""
        now = self._clock()
        found: tuple[float, Hashable] | None = None
        for key, queue in self._waiting.items():
            if key == self._current:
                continue
            first = queue[0]
            deadline = max(first.since, self._run_start) + first.budget
            if now >= deadline and (found is None or deadline < found[0]):
                found = (deadline, key)
        return None if found is None else found[1]

    def _oldest(self) -> Hashable:
        return min(self._waiting, key=lambda k: self._waiting[k][0].since)

    def _timeout(self) -> float:
        """How long to sleep before a deadline may have passed (or the stop flag is due)."""
        now = self._clock()
        soonest = POLL_S
        for key, queue in self._waiting.items():
            if key != self._current:
                first = queue[0]
                left = max(first.since, self._run_start) + first.budget - now
                soonest = min(soonest, max(left, 0.0005))
        return soonest


class Gates:
    """One gate per Edge TPU in this process, made on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, DeviceGate] = {}

    def get(self, device: str) -> DeviceGate:
        with self._lock:
            gate = self._gates.get(device)
            if gate is None:
                gate = self._gates[device] = DeviceGate(device)
            return gate

    def stats(self) -> dict[str, GateStats]:
        with self._lock:
            gates = dict(self._gates)
        return {d: g.stats() for d, g in gates.items()}


GATES = Gates()  # the daemon's gates: every worker on an Edge TPU uses its device's


class GatedSession:
    """A session whose invokes go through its device's gate: for sessions that no worker
    gates itself (a pipeline's segments, which run on devices other models may share)."""

    def __init__(self, session: Any, gate: DeviceGate, key: Hashable, budget: float) -> None:
        self._session, self._gate, self._key, self._budget = session, gate, key, budget
        self.info = session.info
        self.device = session.device

    def invoke(self, inputs: Any) -> Any:
        return self._gate.run(self._key, self._budget, self._session.invoke, inputs)

    def close(self) -> None:
        self._session.close()


def key_for(info: object, model: str) -> Hashable:
    """The key a model's invokes run under: its parameter caching token (models compiled
    together share one, and stay cached together), else the model itself."""
    tokens = getattr(info, "caching_tokens", ()) or ()
    return ("token", tokens[0]) if tokens else ("model", model)
