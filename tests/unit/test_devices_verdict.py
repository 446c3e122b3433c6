"""The verdict rules on plain facts: power, link speed, cascaded hubs, policy, thermal."""

from __future__ import annotations

import json

import pytest

from edgetpud.config import DevicesConfig
from edgetpud.devices.facts import USB_DFU, USB_READY, ApexFacts, HubFacts, UsbFacts
from edgetpud.devices.model import DeviceInfo
from edgetpud.devices.tree import render
from edgetpud.devices.verdict import judge

ROOT3 = HubFacts("usb2", "1d6b:0003", 5000)
ROOT2 = HubFacts("usb1", "1d6b:0002", 480)
EXT = HubFacts("2-3", "2109:0817", 5000, self_powered=True, max_power_ma=0)
SUB = HubFacts("2-3.2", "2109:0817", 5000, self_powered=True, max_power_ma=0)


def acc(name: str, *hubs: HubFacts, speed: int = 5000, **kw: object) -> UsbFacts:
    return UsbFacts(name, kw.pop("vendor_product", USB_READY), speed, hubs=hubs, **kw)  # type: ignore[arg-type]


def by_id(records: list[DeviceInfo]) -> dict[str, DeviceInfo]:
    return {r.identity: r for r in records}


def coral_docs() -> list[UsbFacts]:
    return [
        acc("2-3.1", ROOT3, EXT, max_power_ma=896),
        acc("2-3.2.1", ROOT3, EXT, SUB, max_power_ma=896),
        acc("2-3.2.2", ROOT3, EXT, SUB, max_power_ma=896),
    ]


def test_coral_docs_tree_flags_only_the_secondary_port_of_the_sub_hub() -> None:
    r = by_id(judge(coral_docs(), DevicesConfig()))
    assert r["usb:2-3.1"].verdict == "ok" and r["usb:2-3.1"].reasons == ()
    assert r["usb:2-3.2.1"].verdict == "ok"
    bad = r["usb:2-3.2.2"]
    assert bad.verdict == "degraded"
    assert len(bad.reasons) == 1
    assert "port 2 of 2-3.2" in bad.reasons[0] and "cascaded inside hub 2-3" in bad.reasons[0]
    assert [h.internal for h in bad.hub_chain] == [False, False, True]
    assert [h.port for h in bad.hub_chain] == ["usb2", "2-3", "2-3.2"]
    assert bad.port == "2-3.2.2" and bad.bus == "2" and bad.kind == "usb"


@pytest.mark.parametrize(("setting", "verdict"), [("reject", "rejected"), ("allow", "ok")])
def test_secondary_ports_policy(setting: str, verdict: str) -> None:
    r = by_id(judge(coral_docs(), DevicesConfig(secondary_ports=setting)))  # type: ignore[arg-type]
    assert r["usb:2-3.2.2"].verdict == verdict
    assert r["usb:2-3.2.1"].verdict == "ok"


def test_fixed_sub_hub_of_another_vendor_counts_as_internal() -> None:
    sub = HubFacts("2-3.2", "0bda:5411", 5000, removable="fixed")
    r = judge([acc("2-3.2.3", ROOT3, EXT, sub)], DevicesConfig())[0]
    assert r.verdict == "degraded" and r.hub_chain[-1].internal


def test_hub_on_a_root_port_is_never_internal() -> None:
    hub = HubFacts("2-1", "1d6b:0003", 5000, removable="fixed")
    r = judge([acc("2-1.4", ROOT3, hub)], DevicesConfig())[0]
    assert r.verdict == "ok" and not any(h.internal for h in r.hub_chain)


def test_usb3_root_port_supplies_900ma() -> None:
    r = judge([acc("2-1", ROOT3)], DevicesConfig(performance="max"))[0]
    assert r.power is not None
    assert (r.power.budget_ma, r.power.needed_ma) == (900, 900)
    assert r.verdict == "ok" and r.can_supply_max


def test_usb2_link_is_degraded_or_rejected_by_policy() -> None:
    facts = [acc("1-2", ROOT2, speed=480)]
    degraded = judge(facts, DevicesConfig())[0]
    assert degraded.verdict == "degraded"
    assert degraded.power is not None and degraded.power.budget_ma == 500
    assert any("480 Mb/s (USB 2)" in reason for reason in degraded.reasons)
    rejected = judge(facts, DevicesConfig(usb2="reject"))[0]
    assert rejected.verdict == "rejected"
    assert 'devices.usb2 = "reject"' in rejected.reasons[0]


def test_max_performance_on_usb2_port_warns_about_power() -> None:
    r = judge([acc("1-2", ROOT2, speed=480)], DevicesConfig(performance="max"))[0]
    assert r.verdict == "degraded"
    assert any('performance = "max" needs 900 mA' in reason for reason in r.reasons)
    assert not r.can_supply_max


def test_performance_argument_overrides_policy() -> None:
    r = judge([acc("1-2", ROOT2, speed=480)], DevicesConfig(), performance="max")[0]
    assert r.power is not None and r.power.needed_ma == 900


def test_bus_powered_hub_shares_its_budget() -> None:
    hub = HubFacts("2-4", "05e3:0626", 5000, self_powered=False, max_power_ma=100)
    one = judge([acc("2-4.1", ROOT3, hub)], DevicesConfig())[0]
    assert one.power is not None and one.power.budget_ma == 800  # 900 - hub's own 100 mA
    assert one.verdict == "ok"
    two = by_id(judge([acc("2-4.1", ROOT3, hub), acc("2-4.2", ROOT3, hub)], DevicesConfig()))
    first = two["usb:2-4.1"]
    assert first.power is not None
    assert first.power.budget_ma == 400
    assert first.power.shared_with == ("usb:2-4.2",)
    assert first.verdict == "rejected"
    assert "bus-powered hub 2-4 shares 400 mA" in first.reasons[0]


def test_bus_powered_usb2_hub_with_one_accelerator_is_short() -> None:
    hub = HubFacts("1-1", "05e3:0610", 480, self_powered=False, max_power_ma=100)
    r = judge([acc("1-1.1", ROOT2, hub, speed=480)], DevicesConfig())[0]
    assert r.power is not None and r.power.budget_ma == 400
    assert r.verdict == "rejected"


def test_unconfigured_device_is_rejected() -> None:
    r = judge([acc("2-1", ROOT3, configured=False)], DevicesConfig())[0]
    assert r.verdict == "rejected"
    assert r.power is not None and r.power.configured is False
    assert "empty bConfigurationValue" in r.reasons[0]


def test_over_current_is_reported() -> None:
    r = judge([acc("2-1", ROOT3, over_current_count=3)], DevicesConfig())[0]
    assert r.power is not None and r.power.over_current_count == 3
    assert r.verdict == "degraded"
    assert "3 over-current event(s)" in r.reasons[0]


def test_dfu_state_and_ids() -> None:
    r = judge([acc("2-1", ROOT3, vendor_product=USB_DFU)], DevicesConfig())[0]
    assert (r.state, r.vendor_product, r.verdict) == ("dfu", "1a6e:089a", "ok")


def test_deny_wins_over_allow_and_allow_limits() -> None:
    facts = [acc("2-1", ROOT3), acc("2-2", ROOT3)]
    r = by_id(judge(facts, DevicesConfig(allow=("2-*",), deny=("usb:2-2",))))
    assert r["usb:2-1"].verdict == "ok"
    assert r["usb:2-2"].verdict == "rejected"
    assert 'devices.deny pattern "usb:2-2"' in r["usb:2-2"].reasons[0]
    only = by_id(judge(facts, DevicesConfig(allow=("2-1",))))
    assert only["usb:2-2"].verdict == "rejected"
    assert "not matched by devices.allow" in only["usb:2-2"].reasons[0]


def test_learned_bad_port_is_degraded_with_its_reason() -> None:
    r = judge([acc("2-1", ROOT3)], DevicesConfig(), bad_ports={"usb:2-1": "no context"})[0]
    assert r.verdict == "degraded"
    assert "(no context)" in r.reasons[0]


def test_apex_thermal() -> None:
    trips = (85000, 90000, 95000)
    facts = [
        ApexFacts(
            "apex_0", "0000:03:00.0", dev_node="/dev/apex_0", temp_mc=52000, trip_points_mc=trips
        ),
        ApexFacts("apex_1", "0000:04:00.0", temp_mc=87500, trip_points_mc=trips),
        ApexFacts("apex_2", "0000:05:00.0", temp_mc=-88000, trip_points_mc=trips),
        ApexFacts("apex_3", "0000:06:00.0", unique_id="abc123"),
    ]
    r = by_id(judge(facts, DevicesConfig()))
    cool = r["pci:0000:03:00.0"]
    assert cool.thermal is not None
    assert (cool.thermal.temp_c, cool.thermal.trip_points_c, cool.thermal.throttled) == (
        52.0,
        (85.0, 90.0, 95.0),
        False,
    )
    assert (cool.verdict, cool.dev_node, cool.bus, cool.port) == (
        "ok",
        "/dev/apex_0",
        "pci",
        "0000:03:00.0",
    )
    hot = r["pci:0000:04:00.0"]
    assert hot.thermal is not None and hot.thermal.throttled and hot.verdict == "degraded"
    dead = r["pci:0000:05:00.0"]
    assert dead.verdict == "rejected" and "-88.0 °C" in dead.reasons[0]
    assert r["pci:abc123"].thermal is None


def test_records_survive_json_round_trip() -> None:
    hub = HubFacts("2-4", "05e3:0626", 5000, self_powered=False, max_power_ma=100)
    facts = [*coral_docs(), acc("2-4.1", ROOT3, hub), acc("2-4.2", ROOT3, hub)]
    facts.append(ApexFacts("apex_0", "0000:03:00.0", temp_mc=52000, trip_points_mc=(85000,)))
    records = judge(facts, DevicesConfig())
    again = [DeviceInfo.from_json(json.loads(json.dumps(r.to_json()))) for r in records]
    assert again == records
    assert all(r.to_json()["schema"] == "edgetpud.devices/1" for r in records)


def test_records_are_sorted_by_bus_then_port() -> None:
    facts = [acc("2-10", ROOT3), acc("2-9", ROOT3), acc("1-2", ROOT2, speed=480)]
    facts.insert(0, ApexFacts("apex_0", "0000:03:00.0"))  # type: ignore[arg-type]
    assert [r.identity for r in judge(facts, DevicesConfig())] == [
        "usb:1-2",
        "usb:2-9",
        "usb:2-10",
        "pci:0000:03:00.0",
    ]


def test_tree_shows_the_problem_port_with_its_reason() -> None:
    text = render(judge(coral_docs(), DevicesConfig()))
    lines = text.splitlines()
    assert lines[0] == "Bus 2 (root hub usb2, 5000M): 3 accelerators share its bandwidth"
    bad = next(i for i, line in enumerate(lines) if "usb:2-3.2.2" in line)
    assert lines[bad].endswith("DEGRADED")
    assert lines[bad + 1].strip().startswith("! on port 2 of 2-3.2")
    assert [line.endswith("OK") for line in lines if "usb:2-3." in line] == [True, True, False]
    assert "internal sub-hub" in next(line for line in lines if "hub 2-3.2" in line)


def test_tree_with_no_devices_says_what_to_check() -> None:
    assert "No Edge TPU found" in render([])
