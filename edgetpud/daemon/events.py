"""Everything that arrives on the supervisor's queue, as one typed union.

Other threads never change daemon state: they put one of these on the queue and
the supervisor acts on it at its next turn (`Supervisor.dispatch` matches on the
class, never on which attributes an object happens to have).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from edgetpud.devices.model import DeviceInfo
from edgetpud.workers import WorkerReport


@dataclass(frozen=True)
class DeviceChanged:
    """The device watcher saw a device appear, change or go (from its `devices:watch` thread)."""

    action: Literal["added", "changed", "removed"]
    device: DeviceInfo  # for "removed": the last record, with state="gone"


@dataclass(frozen=True)
class LinkConnected:
    """The MQTT link connected (from paho's thread): health is published at once."""


@dataclass(frozen=True)
class Publish:
    """A component asks the supervisor to publish an event on `…/events` (and mark
    health as changed): `{"event": kind, "node": …, "time": …, **fields}`."""

    kind: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Call:
    """Run `fn` on the supervisor's thread (for a component's own bookkeeping only:
    daemon state is changed by the supervisor's handlers, never by `fn`)."""

    what: str  # for the log when `fn` fails
    fn: Callable[[], None]


Event: TypeAlias = DeviceChanged | WorkerReport | LinkConnected | Publish | Call
EventQueue: TypeAlias = queue.Queue[Event]


class DeviceEvents:
    """What the device watcher puts its events on: turns each `devices.DeviceEvent`
    (anything with `action` and `device`) into a `DeviceChanged` on the supervisor's queue."""

    def __init__(self, events: EventQueue) -> None:
        self._events = events

    def put(self, event: Any) -> None:
        self._events.put(DeviceChanged(event.action, event.device))
