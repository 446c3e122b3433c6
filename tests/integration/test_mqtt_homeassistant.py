"""Home Assistant discovery as Home Assistant sees it, against a real mosquitto.

What an admin would check in the broker (or in Home Assistant's device list): one
device config per node, Edge TPU and model, with `device`, `origin` and
`components`; no temperature sensor for a USB Accelerator; what goes away is
deleted (the empty retained payload), a clean stop deletes nothing and leaves the
node `offline`; configs are sent again when Home Assistant announces itself.
Runs with paho 2.x and paho 1.6 (`make test-paho16`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from typing import Any

from edgetpud.config import MqttConfig
from edgetpud.mqtt import MqttLink
from tests.support.broker import Broker, Subscriber
from tests.support.polling import wait_for

NODE = "box1"
HA = "homeassistant"
NODE_CONFIG = f"{HA}/device/edgetpud_{NODE}/config"
USB = f"{HA}/device/edgetpud_{NODE}_usb_2-1_3/config"
PCI = f"{HA}/device/edgetpud_{NODE}_pci_0000_03_00_0/config"
BIRDS = f"{HA}/device/edgetpud_{NODE}_model_birds/config"
CARS = f"{HA}/device/edgetpud_{NODE}_model_cars/config"
EVERYTHING = {NODE_CONFIG, USB, PCI, BIRDS, CARS}


def health(
    devices: tuple[str, ...] = ("usb", "pci"), models: tuple[str, ...] = ("birds", "cars")
) -> dict[str, Any]:
    """A health snapshot as the daemon publishes it (only what discovery reads)."""
    entries = {
        "usb": {"identity": "usb:2-1.3", "kind": "usb", "state": "ok", "temperature": None},
        "pci": {"identity": "pci:0000:03:00.0", "kind": "pci", "state": "ok", "temperature": 48.5},
    }
    return {
        "devices": [entries[d] for d in devices],
        "models": {m: {"state": "running", "rate": 12.5, "p50_ms": 3.1} for m in models},
    }


def start_link(broker: Broker) -> MqttLink:
    cfg = replace(MqttConfig(), host=broker.host, port=broker.port, homeassistant=True)
    link = MqttLink(cfg, NODE, on_request=lambda request: None)
    link.start()
    wait_for(lambda: link.stats().connected, what="the link to connect")
    return link


def retained(broker: Broker, topic_filter: str = f"{HA}/#") -> dict[str, Any]:
    """What a client subscribing now gets: the broker's retained messages (JSON decoded)."""
    with Subscriber(broker, [topic_filter]) as sub:
        seen = -1
        while seen != len(sub.messages):  # the broker sends them right after SUBACK
            seen = len(sub.messages)
            time.sleep(0.3)
        msgs = list(sub.messages)
    out: dict[str, Any] = {}
    for m in msgs:
        if m.retain and m.payload:
            try:
                out[m.topic] = json.loads(m.payload)
            except ValueError:
                out[m.topic] = bytes(m.payload)
    return out


def configs_become(broker: Broker, topics: set[str]) -> dict[str, Any]:
    """Wait until the retained discovery configs are exactly `topics`; return them."""
    last: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal last
        last = retained(broker)
        return set(last) == topics

    try:
        wait_for(settled, timeout=20, what=f"retained configs {sorted(topics)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the broker holds {sorted(last)}") from None
    return last


def test_one_device_config_per_node_edge_tpu_and_model(broker: Broker) -> None:
    link = start_link(broker)
    try:
        link.publish_health(health())
        configs = configs_become(broker, EVERYTHING)
    finally:
        link.stop()
    for topic, config in configs.items():
        assert config["origin"]["name"] == "edgetpud", topic
        assert config["availability_topic"] == f"edgetpud/{NODE}/status", topic
        assert config["device"]["identifiers"], topic
        assert config["components"], topic
        for cid, comp in config["components"].items():
            assert comp["platform"] in ("sensor", "binary_sensor"), (topic, cid)
            assert comp["unique_id"].startswith(f"edgetpud_{NODE}_"), (topic, cid)
            # object_id is deprecated in Home Assistant 2025.10; default_entity_id replaces it
            assert "object_id" not in comp, (topic, cid)
            assert re.fullmatch(rf"{comp['platform']}\.[a-z0-9_]+", comp["default_entity_id"])
    daemon = configs[NODE_CONFIG]["components"]["daemon"]
    assert daemon["state_topic"] == f"edgetpud/{NODE}/status"
    for child in (USB, PCI, BIRDS, CARS):
        assert configs[child]["device"]["via_device"] == f"edgetpud_{NODE}", child
    # a USB Accelerator reports no temperature: no sensor that would read "unknown" for ever
    usb = configs[USB]["components"]
    assert [c for c in usb.values() if c.get("device_class") == "temperature"] == [], usb
    pci = configs[PCI]["components"]
    (temperature,) = [c for c in pci.values() if c.get("device_class") == "temperature"]
    assert temperature["state_topic"] == f"edgetpud/{NODE}/health"
    latency = configs[BIRDS]["components"]["model_birds_latency_p50"]
    assert latency["value_template"] == "{{ value_json.models['birds'].p50_ms }}"


def test_what_goes_away_is_deleted_and_a_clean_stop_deletes_nothing(broker: Broker) -> None:
    link = start_link(broker)
    try:
        link.publish_health(health())
        configs_become(broker, EVERYTHING)
        # the model cars removed from the config, the USB Accelerator unplugged
        link.publish_health(health(devices=("pci",), models=("birds",)))
        configs_become(broker, {NODE_CONFIG, PCI, BIRDS})
    finally:
        link.stop()
    # a clean stop: the entities stay, unavailable
    configs_become(broker, {NODE_CONFIG, PCI, BIRDS})
    assert retained(broker, f"edgetpud/{NODE}/status") == {f"edgetpud/{NODE}/status": b"offline"}


def test_removals_made_while_the_broker_was_away_reach_it_on_reconnect(broker: Broker) -> None:
    link = start_link(broker)
    try:
        link.publish_health(health())
        configs_become(broker, EVERYTHING)
        broker.kill()
        wait_for(lambda: not link.stats().connected, what="the link to notice")
        link.publish_health(health(models=("birds",)))
        broker.start()
        wait_for(lambda: link.stats().connected, what="the link to reconnect")
        configs_become(broker, EVERYTHING - {CARS})
    finally:
        link.stop()


def test_configs_are_sent_again_when_home_assistant_comes_online(broker: Broker) -> None:
    link = start_link(broker)
    try:
        link.publish_health(health())
        configs_become(broker, EVERYTHING)
        with Subscriber(broker, [f"{HA}/device/#"]) as sub:
            sub.wait_for(f"{HA}/device/#", count=len(EVERYTHING))  # the retained copies
            sub.publish(f"{HA}/status", b"online")  # Home Assistant's birth message
            got = sub.wait_for(f"{HA}/device/#", count=2 * len(EVERYTHING))
        assert {m.topic for m in got[len(EVERYTHING) :]} == EVERYTHING
    finally:
        link.stop()


def test_configs_left_over_from_before_a_restart_are_deleted_others_are_not(
    broker: Broker,
) -> None:
    ours = {"identifiers": [f"edgetpud_{NODE}"], "name": f"edgetpud {NODE}"}
    leftovers = {
        # edgetpud 0.1's per-entity config of this node (object_id scheme)
        f"{HA}/sensor/{NODE}/model_birds_rate/config": {"unique_id": "x", "device": ours},
        # a model of this node that was removed from the config while the daemon was stopped
        f"{HA}/device/edgetpud_{NODE}_model_gone/config": {
            "device": {"identifiers": ["g"], "via_device": f"edgetpud_{NODE}"},
            "components": {},
        },
    }
    others = {
        f"{HA}/sensor/{NODE}/cpu/config": {"unique_id": "cpu", "device": {"identifiers": ["nas"]}},
        f"{HA}/device/edgetpud_box2/config": {"device": {"identifiers": ["edgetpud_box2"]}},
    }
    with Subscriber(broker, ["seed/never"]) as seed:
        for topic, body in {**leftovers, **others}.items():
            seed.client.publish(topic, json.dumps(body), qos=1, retain=True).wait_for_publish(10)
    link = start_link(broker)
    try:
        link.publish_health(health())
        configs_become(broker, EVERYTHING | set(others))
    finally:
        link.stop()
