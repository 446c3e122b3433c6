"""What reaches the supervisor's queue is acted on by its type, not by its attributes.

The supervisor used to pick an event's handler with `hasattr(event, "action") and
hasattr(event, "device")` and `callable(event)` on an untyped queue: any object
with those two attributes was taken for a udev change (and acted on), and any
callable was run. These tests drive `Supervisor.dispatch` with stand-in parts (no
broker, no udev): only a `DeviceChanged` changes the devices, and a stray object
is reported in the log and changes nothing.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgetpud.config import Config, DevicesConfig, RuntimeConfig, parse
from edgetpud.daemon import events
from edgetpud.daemon.intake import Intake
from edgetpud.daemon.state import Board
from edgetpud.daemon.supervisor import Parts, Supervisor
from edgetpud.devices.model import DeviceInfo
from edgetpud.messages import Request, Result
from edgetpud.workers import Session, WorkerReport
from tests.support.placement import dev

USB = "usb:2-1"


@dataclass
class _Stats:
    connected: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"connected": self.connected}


class RecordingLink:
    """Stands in for the MQTT link: keeps what would be published."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.published: list[Mapping[str, Any]] = []
        self.outbox = None

    def start(self) -> None: ...
    def stop(self, timeout: float = 5.0) -> None: ...
    def set_models(self, models: Mapping[str, Any], unavailable: Any = None) -> None: ...
    def publish_result(self, result: Result) -> None: ...
    def publish_event(self, event: Mapping[str, Any]) -> None:
        self.published.append(event)

    def publish_health(self, snapshot: Mapping[str, Any]) -> None: ...
    def stats(self) -> _Stats:
        return _Stats()

    def pause_fleet(self, model: str) -> bool:
        return False

    def resume_fleet(self, model: str) -> None: ...
    def fleet_paused(self, model: str) -> bool:
        return False


class FixedWatcher:
    def __init__(self, devices: list[DeviceInfo]) -> None:
        self.devices = devices

    def start(self) -> list[DeviceInfo]:
        return list(self.devices)

    def set_policy(self, policy: DevicesConfig, performance: str | None = None) -> list[DeviceInfo]:
        return list(self.devices)

    def learn_bad_port(self, identity: str, reason: str) -> None: ...
    def forget_bad_port(self, identity: str) -> None: ...
    def close(self) -> None: ...


class NoRuntime:
    def __init__(self) -> None:
        self.replugs: list[str] = []  # devices whose runtime failures were forgotten

    def name(self, prefer: str) -> str:
        return "none (test)"

    def open(self, model: Path, target: str, rcfg: RuntimeConfig, performance: str) -> Session:
        raise AssertionError("no model is configured: nothing is opened")

    def is_device_fault(self, exc: BaseException | None) -> bool:
        return False

    def recover(self, device: str, why: str) -> bool:
        return False

    def replugged(self, device: str) -> None:
        self.replugs.append(device)


class SilentNotifier:
    watchdog_interval = 0.0

    def ready(self, status: str = "") -> None: ...
    def reloading(self) -> None: ...
    def stopping(self, within: float = 0.0) -> None: ...
    def status(self, text: str) -> None: ...
    def watchdog(self) -> None: ...
    def close(self) -> None: ...


def started(tmp_path: Path, devices: list[DeviceInfo]) -> tuple[Supervisor, RecordingLink]:
    cfg: Config = parse(
        {"daemon": {"node_id": "n1", "state_dir": str(tmp_path)}, "mqtt": {"host": "127.0.0.1"}}
    )
    link = RecordingLink()

    def link_factory(*args: Any, **kwargs: Any) -> RecordingLink:
        return link

    parts = Parts(
        link_factory=link_factory,
        watcher_factory=lambda: FixedWatcher(devices),
        runtime=NoRuntime(),
        notifier=SilentNotifier(),
        events=queue.Queue(),
        board=Board(),
        intake=Intake(),
    )
    sup = Supervisor(cfg, parts)
    sup._start()
    link.published.clear()
    return sup, link


@dataclass(frozen=True)
class HostRestarted:
    """Not a udev change, though it has `action` and `device` (like a device host's notice)."""

    action: str
    device: DeviceInfo


def test_a_device_change_event_changes_the_devices(tmp_path: Path) -> None:
    gone = dev(USB)
    sup, link = started(tmp_path, [gone])
    sup.dispatch(events.DeviceChanged("removed", gone))
    assert USB not in sup.placer.devices
    assert [e["event"] for e in link.published] == ["device_removed"]


def test_a_replug_forgets_the_old_devices_host_deaths_and_a_change_does_not(
    tmp_path: Path,
) -> None:
    """A host aborts when its device is pulled during an invoke (libedgetpu's failed USB
    transfer); after the replug those deaths must not count against the new device."""
    accel = dev(USB)
    sup, _ = started(tmp_path, [accel])
    runtime = sup.placer.runtime
    assert isinstance(runtime, NoRuntime)
    sup.dispatch(events.DeviceChanged("changed", accel))
    assert runtime.replugs == []
    sup.dispatch(events.DeviceChanged("removed", accel))
    sup.dispatch(events.DeviceChanged("added", accel))
    assert runtime.replugs == [USB, USB]


def test_an_object_that_only_looks_like_a_device_event_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    present = dev(USB)
    sup, link = started(tmp_path, [present])
    with caplog.at_level(logging.WARNING):
        sup.dispatch(HostRestarted("removed", present))  # type: ignore[arg-type]
    assert USB in sup.placer.devices, "an object with action/device was taken for a udev removal"
    assert link.published == []
    assert "unknown event" in caplog.text and "HostRestarted" in caplog.text


def test_a_stray_callable_on_the_queue_is_not_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup, _ = started(tmp_path, [])
    ran: list[bool] = []
    stray: Callable[[], None] = lambda: ran.append(True)  # noqa: E731
    with caplog.at_level(logging.WARNING):
        sup.dispatch(stray)  # type: ignore[arg-type]
    assert ran == []
    assert "unknown event" in caplog.text


def test_a_component_call_runs_on_the_supervisor(tmp_path: Path) -> None:
    sup, _ = started(tmp_path, [])
    ran: list[bool] = []
    sup.dispatch(events.Call("test", lambda: ran.append(True)))
    assert ran == [True]


def test_a_request_for_an_unknown_model_is_refused_by_intake(tmp_path: Path) -> None:
    sup, _ = started(tmp_path, [])
    refusal = sup.parts.intake.submit(Request(model="nope", payload=b""))
    assert refusal == 'unknown model "nope"'


def test_a_late_report_from_a_retired_worker_quarantines_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pipeline's worker stopped by a re-plan (one stage's device unplugged) may still report
    that reopening failed; its devices, one of them now serving the new pipeline, stay usable."""
    second = dev("usb:2-2")
    sup, link = started(tmp_path, [dev(USB), second])
    late = WorkerReport(
        "worker:ssd@usb:2-1+usb:2-2",
        "ssd",
        "usb:2-1+usb:2-2",
        "open_failed",
        "Edge TPU usb:2-1 could not be opened",
        serial=7,
    )
    with caplog.at_level(logging.INFO):
        sup.dispatch(late)
    assert sup.placer.trust == {}, "a retired worker's report quarantined a device"
    assert [e["event"] for e in link.published] == []
    assert "ignored open_failed from a worker already retired" in caplog.text


def test_a_retired_workers_host_death_is_still_told(tmp_path: Path) -> None:
    """The host of a device unplugged mid-invoke aborts after the placer has moved the model:
    the host_died event is a fact about the device, told whoever's worker saw it."""
    sup, link = started(tmp_path, [dev(USB)])
    sup.dispatch(WorkerReport("worker:beta@usb:2-1", "beta", USB, "host_lost", "aborted", serial=3))
    assert [e["event"] for e in link.published] == ["host_died"]
    assert sup.placer.trust == {}
