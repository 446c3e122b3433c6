"""The ordered outbox of results and events: the backlog while the broker is away.

Owned by the application, not by a connection: a reload that replaces the MQTT link
hands the same outbox to the new link, so nothing waiting in it is lost, and a
worker that publishes through the old link while it stops still lands here and is
sent by the new one. No paho here: `transport.py` drains it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, NamedTuple


class Out(NamedTuple):
    """One message to publish."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: Any  # the transport's MQTT 5 properties, or None


class Outbox:
    """Messages in the order they are to be published, and what guards them.

    `lock` guards every field here and the draining transport's window state;
    `cond` is notified when messages arrive or the window opens, `room` when the
    outbox shrinks or the link goes down (results waiting for room stop waiting).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.room = threading.Condition(self.lock)
        self.items: deque[Out] = deque()
        self.dropped = 0  # messages dropped because the backlog was full
        self.requeued = 0  # messages the last disconnect put back at the front
        self.sending = False  # a thread holds messages taken from here, not yet published
        self.owner = 0  # bumped by each link that takes the outbox over (see adopt)

    def adopt(self) -> int:
        """A new link drains this outbox from now on; the number it is known by."""
        with self.lock:
            self.owner += 1
            return self.owner

    def __len__(self) -> int:
        return len(self.items)

    def drop_oldest(self) -> None:
        """Make room for one more (lock held): the oldest message goes, and is counted."""
        self.items.popleft()
        self.requeued = max(0, self.requeued - 1)
        self.dropped += 1

    def put_back(self, messages: list[Out], behind: int = 0) -> None:
        """`messages` back at the front (lock held), behind the first `behind` items."""
        behind = min(behind, len(self.items))
        self.items.rotate(-behind)
        self.items.extendleft(reversed(messages))
        self.items.rotate(behind)

    def take(self, n: int) -> list[Out]:
        """The first `n` messages, removed (lock held)."""
        return [self.items.popleft() for _ in range(n)]
