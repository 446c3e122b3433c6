"""A frozen picture of the daemon's state, for everything that only reads it.

The supervisor (edgetpud/daemon/) is the only writer of daemon state; it takes a
`Snapshot` at each health tick and on every change, and publishes it. Health, the
STATUS= line and any other reader (a metrics endpoint, a dashboard) render a
snapshot and never touch the live state, so they import nothing from the daemon.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edgetpud.devices.model import DeviceInfo


class ModelState(str, enum.Enum):
    """Where a model stands, as `…/health` reports it."""

    RUNNING = "running"  # at least one worker's loop turns
    STARTING = "starting"  # workers exist, none has opened its session yet
    WAITING = "waiting"  # no device to run on (yet)
    DISABLED = "disabled"  # cannot run at all: the reason says why


@dataclass(frozen=True)
class DeviceTrust:
    """What the daemon has learned about one device while using it."""

    state: Literal["ok", "hung", "quarantined"] = "ok"
    reason: str = ""
    retry_in_s: float = 0.0  # quarantined: seconds until it is tried again

    def as_dict(self) -> dict[str, Any]:
        if self.state == "ok":
            return {"state": "ok"}
        if self.state == "hung":
            return {"state": "hung", "reason": self.reason}
        return {"state": "quarantined", "reason": self.reason, "retry_in_s": self.retry_in_s}


@dataclass(frozen=True)
class ModelView:
    """One configured model."""

    name: str
    state: ModelState
    reason: str  # why disabled, or the placement's reason
    tier: str  # the placement tier ("disabled"/"waiting" when not placed)
    devices: tuple[str, ...]  # the targets its workers run on
    mqtt_fed: bool  # its requests come over MQTT
    no_device: str  # set once it waited daemon.waiting_timeout without a device
    queue_depth: int
    queue_limit: int
    dropped: int
    results: int
    errors: int
    processed_by_current_workers: int
    p50_ms: float
    p99_ms: float
    io_bytes: int = 0  # input + output tensor bytes per inference (what crosses a USB bus)
    stages: tuple[Mapping[str, Any], ...] = ()  # a pipelined model: each segment's stage


@dataclass(frozen=True)
class Snapshot:
    """The daemon at one instant (`mono` is time.monotonic(), `wall` time.time())."""

    mono: float
    wall: float
    version: str
    node: str
    uptime_s: float
    config: str | None
    config_generation: int
    last_reload_error: str
    runtime_error: str
    devices: tuple[DeviceInfo, ...]  # sorted by identity
    trust: Mapping[str, DeviceTrust]  # identity → what using it taught
    device_models: Mapping[str, tuple[str, ...]]  # identity → models placed on it
    models: Mapping[str, ModelView]  # sorted by name
    mqtt: Mapping[str, Any] | None  # the link's stats (as_dict), None without a link
    sections: Mapping[str, Any] = field(default_factory=dict)  # one per component

    @property
    def mqtt_connected(self) -> bool:
        return bool(self.mqtt and self.mqtt.get("connected"))
