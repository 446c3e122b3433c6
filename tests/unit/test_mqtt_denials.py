"""A broker's refusals are counted by kind, not as published (paho 2's reason codes).

With a real mosquitto, tests/integration/test_mqtt_hostile.py covers PUBACK 0x87. Here:
the kinds topics are counted under, and a broker that closes the connection with an
MQTT 5 DISCONNECT "Not authorized" (brokers set to disconnect on an ACL denial), which
mosquitto never sends, so the transport's handler is driven with paho's reason code.
"""

from __future__ import annotations

import logging

import pytest

from edgetpud.config import MqttConfig
from edgetpud.mqtt.outbox import Outbox
from edgetpud.mqtt.topics import Topics
from edgetpud.mqtt.transport import PAHO2, Transport

TOPICS = Topics("edgetpud", "box1")


def test_topic_kinds() -> None:
    kind = TOPICS.kind_of
    assert kind("edgetpud/box1/health") == "health"
    assert kind("edgetpud/box1/status") == "status"
    assert kind("edgetpud/box1/events") == "events"
    assert kind("edgetpud/box1/fleet") == "fleet"
    assert kind("edgetpud/box1/models/birds/results") == "results"
    assert kind("homeassistant/sensor/x/config") == "discovery"
    assert kind("ha/sensor/x/config", "ha") == "discovery"
    assert kind("replies/me") == "replies"


@pytest.mark.skipif(not PAHO2, reason="paho 1.6 hands on no MQTT 5 reason codes")
def test_a_not_authorized_disconnect_is_a_counted_denial(caplog: pytest.LogCaptureFixture) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    transport = Transport(
        MqttConfig(),
        TOPICS,
        Outbox(),
        client_id="edgetpud-box1",
        on_message=lambda m: None,
        on_up=lambda: None,
    )
    caplog.set_level(logging.WARNING, logger="edgetpud")
    transport._handle_disconnect(ReasonCode(PacketTypes.DISCONNECT, identifier=0x87))
    transport._handle_disconnect(ReasonCode(PacketTypes.DISCONNECT, identifier=0x80))
    assert transport.window.denials.counts == {"disconnect": 1}
    (said,) = [r.getMessage() for r in caplog.records if "closed the connection" in r.getMessage()]
    assert "Not authorized" in said and "Broker ACL" in said
