"""The requests waiting for one model, shared by every worker that serves it.

Sources (MQTT, the Frigate endpoint) put; each worker's lanes get. Handed-back
requests (a stall, a host that died, a worker stopped for a move) go back to the
front and are never dropped.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Literal

from edgetpud.messages import Request

Overflow = Literal["block", "drop_oldest", "latest"]
OVERFLOW_POLICIES: tuple[Overflow, ...] = ("block", "drop_oldest", "latest")


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
