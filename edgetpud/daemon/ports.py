"""What the supervisor needs of the parts edgetpud/app.py builds and passes in.

Structural types only: the supervisor imports no paho, pyudev or TFLite runtime;
tests pass stand-ins that fit these shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edgetpud.config import Config, DevicesConfig, MqttConfig, RuntimeConfig
from edgetpud.daemon.events import Event
from edgetpud.devices.model import DeviceInfo
from edgetpud.messages import Request, Result
from edgetpud.snapshot import Snapshot
from edgetpud.workers import Session


class LinkStats(Protocol):
    """What the supervisor reads of the link's counters (mqtt.MqttStats fits it)."""

    @property
    def connected(self) -> bool: ...

    def as_dict(self) -> dict[str, Any]: ...


class Link(Protocol):
    """The MQTT link (edgetpud.mqtt.MqttLink): results, events, health, request intake."""

    @property
    def outbox(self) -> Any:
        """The backlog; a link replacing this one takes it over (nothing lost on relink)."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def set_models(
        self,
        models: Mapping[str, Any],
        unavailable: Mapping[str, tuple[str, str]] | None = None,
    ) -> None: ...

    def publish_result(self, result: Result) -> None: ...

    def publish_event(self, event: Mapping[str, Any]) -> None: ...

    def publish_health(self, snapshot: Mapping[str, Any]) -> None: ...

    def stats(self) -> LinkStats: ...

    def pause_fleet(self, model: str) -> bool: ...

    def resume_fleet(self, model: str) -> None: ...

    def fleet_paused(self, model: str) -> bool: ...


class LinkFactory(Protocol):
    """Builds a link, not started (app.py passes MqttLink); raises ConfigUnreadableError
    for credential files unusable on opening."""

    def __call__(
        self,
        cfg: MqttConfig,
        node_id: str,
        *,
        on_request: Callable[[Request], str | None],
        on_connection: Callable[[bool], None],
        fleet_group: str = "",
        outbox: Any = None,
        max_decode_bytes: int = ...,
    ) -> Link: ...


class Watcher(Protocol):
    """The device watcher (edgetpud.devices.DeviceWatcher); its events reach the
    supervisor's queue as `events.DeviceChanged`."""

    def start(self) -> list[DeviceInfo]: ...

    def set_policy(
        self, policy: DevicesConfig, performance: str | None = None
    ) -> list[DeviceInfo]: ...

    def learn_bad_port(self, identity: str, reason: str) -> None: ...

    def forget_bad_port(self, identity: str) -> None: ...

    def close(self) -> None: ...


class Runtime(Protocol):
    """The TFLite runtime (edgetpud.runtime behind app.RuntimeAdapter)."""

    def name(self, prefer: str) -> str:
        """The runtime that would be used; raises EdgetpudError when none is installed."""
        ...

    def open(self, model: Path, target: str, rcfg: RuntimeConfig, performance: str) -> Session:
        """Open `model` on `target` ("cpu" or a device identity)."""
        ...

    def recover(self, device: str, why: str) -> bool:
        """A wedged invoke on `device`: end what holds it (its device host) and reset it,
        so it can be opened again; False when nothing could be done."""
        ...

    def is_device_fault(self, exc: BaseException | None) -> bool:
        """Whether an open failure was the device refusing (a port worth learning as bad)."""
        ...

    def replugged(self, device: str) -> None:
        """`device` was removed or added: what its earlier runtime failures taught no
        longer applies (the device host's death count, edgetpud/hosts)."""
        ...


class Notifier(Protocol):
    """systemd notification (sd_notify)."""

    watchdog_interval: float

    def ready(self, status: str = "") -> None: ...

    def reloading(self) -> None: ...

    def stopping(self, within: float = 0.0) -> None: ...

    def status(self, text: str) -> None: ...

    def watchdog(self) -> None: ...

    def close(self) -> None: ...


class StateView(Protocol):
    """Read-only access to the latest snapshot the supervisor published."""

    def latest(self) -> Snapshot | None:
        """The last snapshot published; None before the supervisor's first."""
        ...


class Component(Protocol):
    """A part app.py builds and the supervisor starts, reconfigures and stops.

    Every method is called on the supervisor's thread. A component reads state only
    through the `StateView` it was given, and tells the supervisor things only by
    putting an `events.Event` on the queue it was given; it never touches the
    supervisor's objects.
    """

    name: str  # also the key of its section in the health snapshot

    def start(self) -> None: ...

    def apply_config(self, cfg: Config) -> None:
        """A reload was accepted: take what changed in `cfg`."""
        ...

    def health(self) -> Mapping[str, Any] | None:
        """Its section of the health snapshot (JSON-ready), or None for none."""
        ...

    def stop(self, deadline: float) -> None:
        """Stop by `deadline` (time.monotonic()); idempotent."""
        ...


@runtime_checkable
class ObservesResults(Protocol):
    """A component that sees every result (app.py wires it): `observe` runs on the worker
    thread that produced it, after it was handed to the link. It must not block."""

    def observe(self, result: Result) -> None: ...


@runtime_checkable
class ReadsHealth(Protocol):
    """A component that gets every health document rendered (supervisor thread; `doc`
    is schema edgetpud.health/1 and must not be changed). It must not block."""

    def on_health(self, doc: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class ComponentContext:
    """What app.py gives a component when it builds it."""

    view: StateView  # the latest Snapshot (any thread)
    post: Callable[[Event], None]  # put an event on the supervisor's queue (any thread)
    submit: Callable[[Request], str | None]  # admit a request: None = queued, else the refusal
