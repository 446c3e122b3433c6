"""Hotplug through a real libudev monitor on a umockdev testbed."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgetpud.config import Config, DevicesConfig, ModelConfig, clock_needed
from edgetpud.devices import DeviceEvent, DeviceInfo, DeviceWatcher
from edgetpud.devices import watcher as watcher_module
from tests.support.umock import EVENT_WINDOW, Testbed, umock  # noqa: F401 - fixture

DEADLINE = 30.0  # generous: a loaded 2-core machine


class Events:
    """The service's side of the queue: collect events, wait for a condition with a deadline."""

    def __init__(self) -> None:
        self.queue: queue.Queue[DeviceEvent] = queue.Queue()
        self.seen: list[DeviceEvent] = []

    def drain(self) -> list[DeviceEvent]:
        while True:
            try:
                self.seen.append(self.queue.get_nowait())
            except queue.Empty:
                return self.seen

    def wait_for(
        self, condition: Callable[[list[DeviceEvent]], bool], timeout: float = DEADLINE
    ) -> list[DeviceEvent]:
        deadline = time.monotonic() + timeout
        while not condition(self.drain()):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out; events so far: {[(e.action, e.device.identity) for e in self.seen]}"
                )
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.queue.get(timeout=0.1))
        return self.seen

    def settle(self, quiet: float = 1.0) -> list[DeviceEvent]:
        """Wait until no event arrives for `quiet` seconds (used only after the condition was met)."""
        while True:
            try:
                self.seen.append(self.queue.get(timeout=quiet))
            except queue.Empty:
                return self.seen


def has(action: str, identity: str, **fields: object) -> Callable[[list[DeviceEvent]], bool]:
    def check(events: list[DeviceEvent]) -> bool:
        return any(
            e.action == action
            and e.device.identity == identity
            and all(getattr(e.device, k) == v for k, v in fields.items())
            for e in events
        )

    return check


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def watch(
    umock: Testbed,  # noqa: F811
    events: Events,
    tmp_path: Path,
) -> Iterator[Callable[..., DeviceWatcher]]:
    made: list[DeviceWatcher] = []

    def make(policy: DevicesConfig | None = None, state_dir: Path | None = None) -> DeviceWatcher:
        w = DeviceWatcher(
            policy or DevicesConfig(firmware_debounce=2.0), state_dir or tmp_path, events.queue
        )
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def by_id(records: list[DeviceInfo]) -> dict[str, DeviceInfo]:
    return {r.identity: r for r in records}


def test_start_returns_present_devices_then_reports_plug_and_unplug(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
) -> None:
    root = umock.add_root_hub(2, 5000)
    umock.add_accelerator(root, 1)
    umock.add_apex(0, "0000:03:00.0", temp_mc=50000)
    watcher = watch()
    present = watcher.start()
    assert [d.identity for d in present] == ["usb:2-1", "pci:0000:03:00.0"]
    assert any(t.name == "devices:watch" for t in threading.enumerate())

    plugged = umock.add_accelerator(root, 2)
    seen = events.wait_for(has("added", "usb:2-2", state="ready", verdict="ok"))
    umock.unplug(plugged)
    seen = events.wait_for(has("removed", "usb:2-2", state="gone"))
    assert [(e.action, e.device.identity) for e in events.settle()] == [
        ("added", "usb:2-2"),
        ("removed", "usb:2-2"),
    ]
    removed = seen[-1].device
    assert removed.port == "2-2" and removed.power is not None  # the last record, kept
    assert [d.identity for d in watcher.snapshot()] == ["usb:2-1", "pci:0000:03:00.0"]
    watcher.close()
    watcher.close()  # idempotent


def test_firmware_load_is_one_change_not_an_unplug(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
) -> None:
    root = umock.add_root_hub(2, 5000)
    watcher = watch()
    watcher.start()
    dfu = umock.add_accelerator(root, 3, state="dfu")
    events.wait_for(has("added", "usb:2-3", state="dfu", vendor_product="1a6e:089a"))
    umock.firmware_load(dfu)
    events.wait_for(has("changed", "usb:2-3", state="ready", vendor_product="18d1:9302"))
    # nothing more may arrive once the 2 s debounce has passed
    assert [(e.action, e.device.state) for e in events.settle(quiet=3.0)] == [
        ("added", "dfu"),
        ("changed", "ready"),
    ]
    assert [(d.identity, d.state) for d in watcher.snapshot()] == [("usb:2-3", "ready")]


def test_device_gone_longer_than_the_debounce_is_removed(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
) -> None:
    root = umock.add_root_hub(2, 5000)
    dfu = umock.add_accelerator(root, 1, state="dfu")
    watcher = watch(DevicesConfig(firmware_debounce=0.5))
    assert [d.state for d in watcher.start()] == ["dfu"]
    umock.unplug(dfu)
    seen = events.wait_for(has("removed", "usb:2-1", state="gone"))
    assert [e.action for e in seen] == ["removed"]
    assert watcher.snapshot() == []


def test_new_neighbour_under_bus_powered_hub_changes_both_verdicts(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
) -> None:
    root = umock.add_root_hub(2, 5000)
    hub = umock.add_hub(root, 1, 5000, self_powered=False, max_power_ma=100)
    umock.add_accelerator(hub, 1)
    watcher = watch()
    (first,) = watcher.start()
    assert first.verdict == "ok" and first.power is not None and first.power.budget_ma == 800
    umock.add_accelerator(hub, 2)
    events.wait_for(lambda ev: has("added", "usb:2-1.2")(ev) and has("changed", "usb:2-1.1")(ev))
    now = by_id(watcher.snapshot())
    assert {r.verdict for r in now.values()} == {"rejected"}
    assert now["usb:2-1.1"].power is not None and now["usb:2-1.1"].power.shared_with == (
        "usb:2-1.2",
    )


def test_set_policy_reports_changed_verdicts_only(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
) -> None:
    umock.coral_docs_tree()
    watcher = watch()
    before = by_id(watcher.start())
    assert before["usb:2-3.2.2"].verdict == "degraded"
    after = by_id(watcher.set_policy(DevicesConfig(secondary_ports="reject")))
    assert after["usb:2-3.2.2"].verdict == "rejected"
    assert after["usb:2-3.1"] == before["usb:2-3.1"]
    changed = events.settle(0.5)
    assert [(e.action, e.device.identity, e.device.verdict) for e in changed] == [
        ("changed", "usb:2-3.2.2", "rejected")
    ]


def test_a_model_at_max_clock_raises_the_power_an_accelerator_needs_to_900_ma(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
) -> None:
    """devices.performance stays "std"; a model with performance = "max" makes the daemon
    judge ports for 900 mA (config.clock_needed): a USB 2 port (500 mA) is then degraded."""
    root = umock.add_root_hub(1, speed=480)
    umock.add_accelerator(root, 1, speed=480)
    watcher = watch()
    (before,) = watcher.start()
    assert before.power is not None and before.power.needed_ma == 500
    cfg = Config(models={"birds": ModelConfig(model=Path("m_edgetpu.tflite"), performance="max")})
    assert clock_needed(cfg) == "max"
    (after,) = watcher.set_policy(cfg.devices, clock_needed(cfg))
    assert after.power is not None and after.power.needed_ma == 900
    assert any('performance = "max" needs 900 mA' in r for r in after.reasons), after.reasons
    (back,) = watcher.set_policy(cfg.devices, clock_needed(Config()))
    assert back.power is not None and back.power.needed_ma == 500


def test_learned_bad_port_persists_and_is_forgotten(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
    tmp_path: Path,
) -> None:
    root = umock.add_root_hub(2, 5000)
    umock.add_accelerator(root, 4)
    state = tmp_path / "state-dir"
    watcher = watch(state_dir=state)
    watcher.start()
    watcher.learn_bad_port("usb:2-4", "no Edge TPU context")
    events.wait_for(has("changed", "usb:2-4", verdict="degraded"))
    saved = json.loads((state / "learned-ports.json").read_text())
    assert saved["ports"]["usb:2-4"]["reason"] == "no Edge TPU context"
    watcher.close()

    again = watch(state_dir=state)
    (record,) = again.start()
    assert record.verdict == "degraded" and "(no Edge TPU context)" in record.reasons[0]
    again.forget_bad_port("usb:2-4")
    events.wait_for(has("changed", "usb:2-4", verdict="ok"))
    assert json.loads((state / "learned-ports.json").read_text())["ports"] == {}


def test_burst_of_100_events_loses_and_duplicates_nothing(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
) -> None:
    roots = [umock.add_root_hub(bus, 5000, maxchild=15) for bus in (2, 3, 4, 5)]
    watcher = watch()
    assert watcher.start() == []
    plugged: dict[str, str] = {}
    ops: list[tuple[str, int]] = [("add", i) for i in range(60)]
    ops += [("remove", i) for i in range(0, 60, 3)] + [("remove", i) for i in range(1, 60, 3)]
    assert len(ops) == 100
    paths: dict[int, str] = {}
    adds = removes = 0
    for start in range(0, len(ops), EVENT_WINDOW):
        for action, i in ops[start : start + EVENT_WINDOW]:
            if action == "add":
                paths[i] = umock.add_accelerator(roots[i % 4], i // 4 + 1)
                plugged[paths[i]] = f"usb:{i % 4 + 2}-{i // 4 + 1}"
                adds += 1
            else:
                umock.unplug(paths.pop(i))
                removes += 1

        def caught_up(ev: list[DeviceEvent], a: int = adds, r: int = removes) -> bool:
            return (
                sum(e.action == "added" for e in ev) >= a
                and sum(e.action == "removed" for e in ev) >= r
            )

        events.wait_for(caught_up)  # umockdev's limit, see tests/support/umock.py
    seen = events.settle()
    assert sum(e.action == "added" for e in seen) == 60
    assert sum(e.action == "removed" for e in seen) == 40
    history: dict[str, list[str]] = {}
    for e in seen:
        history.setdefault(e.device.identity, []).append(e.action)
    assert len(history) == 60
    assert all(h in (["added"], ["added", "removed"]) for h in history.values())
    assert sorted(d.identity for d in watcher.snapshot()) == sorted(
        plugged[p] for p in paths.values()
    )


def test_rescan_after_activity_catches_a_lost_remove_event(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
) -> None:
    root = umock.add_root_hub(2, 5000)
    lost = umock.add_accelerator(root, 1)
    watcher = watch()
    assert [d.identity for d in watcher.start()] == ["usb:2-1"]
    umock.remove_device(lost)  # gone from sysfs, but its uevent never arrives
    umock.add_accelerator(root, 2)  # any later activity triggers the re-scan
    events.wait_for(has("removed", "usb:2-1", state="gone"))
    assert [d.identity for d in watcher.snapshot()] == ["usb:2-2"]
    assert [(e.action, e.device.identity) for e in events.settle()] == [
        ("added", "usb:2-2"),
        ("removed", "usb:2-1"),
    ]


def test_apex_temperature_is_polled_and_drains_past_the_last_trip_point(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
) -> None:
    """The apex driver sends no uevent when a module heats up: the watcher reads `temp`
    every thermal_interval. 80 → 87 → 96 → 88 → 40 °C walks the module through full
    clock, throttled, drained (past the last trip point), still drained while it cools
    above the first trip point, and back in service; -88 °C is a dead module."""
    apex = umock.add_apex(0, "0000:03:00.0", temp_mc=45000)
    ident = "pci:0000:03:00.0"
    watcher = watch(DevicesConfig(thermal_interval=0.2))
    assert by_id(watcher.start())[ident].verdict == "ok"

    def thermal_is(level: int, verdict: str, draining: bool, temp: float) -> Callable[..., bool]:
        def check(evs: list[DeviceEvent]) -> bool:
            last = [e.device for e in evs if e.device.identity == ident][-1:]
            return bool(last) and (
                last[0].thermal is not None
                and (last[0].thermal.level, last[0].verdict, last[0].thermal.draining)
                == (level, verdict, draining)
                and last[0].thermal.temp_c == temp
            )

        return check

    steps = [
        (80000, 0, "ok", False),
        (87000, 1, "degraded", False),
        (96000, 3, "rejected", True),
        (88000, 1, "rejected", True),  # hysteresis: not back until below 85 °C
        (40000, 0, "ok", False),
    ]
    for temp_mc, level, verdict, draining in steps:
        umock.set_attribute(apex, "temp", str(temp_mc))
        events.wait_for(thermal_is(level, verdict, draining, temp_mc / 1000))
    hot = [e.device for e in events.seen if e.device.thermal and e.device.thermal.level == 3]
    assert "past its last trip point (95 °C)" in hot[-1].reasons[0]
    assert "used again below 85 °C" in hot[-1].reasons[0]

    umock.set_attribute(apex, "temp", "-88000")
    events.wait_for(
        lambda evs: any(
            e.device.thermal is not None
            and e.device.thermal.dead
            and e.device.verdict == "rejected"
            for e in evs
        )
    )
    assert events.seen[-1].device.reasons[0].startswith("dead: reads -88.0 °C")
    assert all(e.action == "changed" for e in events.seen)


def test_an_accelerator_whose_events_were_lost_is_found_and_dropped_by_the_periodic_rescan(
    umock: Testbed,  # noqa: F811
    watch: Callable[..., DeviceWatcher],
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """netlink drops events when a listener's queue overflows: a plugged accelerator whose
    add event never arrives is still taken into service, and one whose remove event never
    arrives is still dropped, by the re-scan."""
    monkeypatch.setattr(watcher_module, "RESCAN_EVERY", 0.5)
    root = umock.add_root_hub(2, 5000)
    watcher = watch()
    lost: list[str] = []
    monkeypatch.setattr(watcher, "_on_udev", lambda device: lost.append(device.sys_path))
    watcher.start()
    plugged = umock.add_accelerator(root, 1)
    events.wait_for(has("added", "usb:2-1", state="ready", verdict="ok"), timeout=10)
    assert any(p.endswith("/2-1") for p in lost), "the add event was not the one lost"
    assert [d.identity for d in watcher.snapshot()] == ["usb:2-1"]
    umock.unplug(plugged)
    events.wait_for(has("removed", "usb:2-1", state="gone"), timeout=10)
    assert watcher.snapshot() == []
    assert [e.action for e in events.settle()] == ["added", "removed"]
