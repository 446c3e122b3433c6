"""Home Assistant discovery's decisions as plain data: which configs to publish, which to
delete, in whatever order the broker's retained replay and the health snapshots come.
(tests/integration/test_mqtt_homeassistant.py checks the same against mosquitto.)"""

from __future__ import annotations

import json
from typing import Any

from edgetpud.mqtt.discovery import Discovery, has_temperature
from edgetpud.mqtt.topics import Incoming, Topics

HA = "homeassistant"
NODE = f"{HA}/device/edgetpud_n1/config"
BIRDS = f"{HA}/device/edgetpud_n1_model_birds/config"
GONE = f"{HA}/device/edgetpud_n1_model_gone/config"


def health(*models: str) -> dict[str, Any]:
    return {"devices": [], "models": {m: {"rate": 1.0} for m in models}}


def retained(topic: str, device: dict[str, Any]) -> Incoming:
    return Incoming(topic, json.dumps({"device": device}).encode(), retain=True)


def discovery() -> Discovery:
    return Discovery(HA, Topics("edgetpud", "n1"))


def test_a_leftover_replayed_before_the_first_snapshot_is_deleted_by_it() -> None:
    d = discovery()
    assert d.take(retained(GONE, {"identifiers": ["x"], "via_device": "edgetpud_n1"})) == []
    out = d.update(health("birds"), connected=True)
    assert out[0] == (GONE, b"")
    assert {t for t, p in out if p} == {NODE, BIRDS}


def test_a_leftover_replayed_after_a_snapshot_is_deleted_at_once() -> None:
    d = discovery()
    d.update(health("birds"), connected=True)
    gone = retained(GONE, {"identifiers": ["x"], "via_device": "edgetpud_n1"})
    assert d.take(gone) == [(GONE, b"")]
    assert d.take(retained(BIRDS, {"identifiers": ["y"], "via_device": "edgetpud_n1"})) == []


def test_other_nodes_and_other_tools_are_left_alone() -> None:
    d = discovery()
    d.update(health(), connected=True)
    other_node = retained(f"{HA}/device/edgetpud_n10/config", {"identifiers": ["edgetpud_n10"]})
    other_tool = retained(f"{HA}/sensor/n1/cpu/config", {"identifiers": ["nas-agent"]})
    assert d.take(other_node) == [] and d.take(other_tool) == []
    live = Incoming(GONE, b'{"device": {"via_device": "edgetpud_n1"}}', retain=False)
    assert d.take(live) == []  # our own publish coming back, not the broker's memory


def test_removals_while_disconnected_go_out_first_on_connect() -> None:
    d = discovery()
    d.update(health("birds", "cars"), connected=True)
    assert d.update(health("birds"), connected=False) == []
    out = d.everything()
    assert out[0] == (f"{HA}/device/edgetpud_n1_model_cars/config", b"")
    assert [t for t, p in out[1:]] == [NODE, BIRDS]
    assert d.everything()[0][0] == NODE  # the deletion is sent once


def test_home_assistant_online_sends_everything_offline_nothing() -> None:
    d = discovery()
    d.update(health("birds"), connected=True)
    assert {t for t, _ in d.take(Incoming(f"{HA}/status", b"online"))} == {NODE, BIRDS}
    assert d.take(Incoming(f"{HA}/status", b"offline")) == []
    assert d.wants(f"{HA}/status") and d.wants(BIRDS) and not d.wants("edgetpud/n1/status")


def test_temperature_sensor_only_for_devices_that_have_one() -> None:
    assert not has_temperature({"kind": "usb", "temperature": None})
    assert has_temperature({"kind": "pci", "temperature": None})  # a failed reading
    assert has_temperature({"kind": "pci", "temperature": 51.0})
