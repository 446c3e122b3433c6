"""Fleet back-pressure in the MQTT link: two links on a real mosquitto, one shared group.

A link pauses a model's fleet subscription only while another online node of the
group takes it, so the broker never finds the fleet topic without a member; when the
last peer with room goes away, a paused link takes the requests again by itself.
Both with a one-level topic prefix and a two-level one ("site/edgetpud").
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgetpud.config import MqttConfig
from edgetpud.messages import Request
from edgetpud.mqtt import MqttLink
from tests.support.broker import Broker, Subscriber
from tests.support.polling import wait_for


class Spec:
    nbytes = 1
    shape = (1,)
    dtype = "uint8"


class Inputs:
    inputs = (Spec(),)  # a one-byte raw tensor


def link(broker: Broker, node: str, got: list[Request], prefix: str) -> MqttLink:
    cfg = replace(MqttConfig(), host=broker.host, port=broker.port, topic_prefix=prefix)

    def take(request: Request) -> None:
        got.append(request)

    lk = MqttLink(cfg, node, on_request=take, fleet_group="g")
    lk.set_models({"m": Inputs()})
    lk.start()
    wait_for(lambda: lk.stats().connected, what=f"{node} connected")
    return lk


@pytest.mark.parametrize("prefix", ["t", "site/t"])
def test_the_last_member_keeps_the_fleet_topic(broker: Broker, prefix: str) -> None:
    got_a: list[Request] = []
    got_b: list[Request] = []
    a, b = link(broker, "a", got_a, prefix), link(broker, "b", got_b, prefix)
    try:
        wait_for(lambda: "m" in a.fleet_peers().get("b", {}).get("models", []), what="a sees b")
        wait_for(lambda: "m" in b.fleet_peers().get("a", {}).get("models", []), what="b sees a")
        assert a.pause_fleet("m") and a.fleet_paused("m")
        wait_for(lambda: b.fleet_peers()["a"]["paused"] == ["m"], what="b sees a paused")
        assert not b.pause_fleet("m"), "b would leave the group without a member"

        with Subscriber(broker, ["t/unused"]) as client:
            for i in range(6):
                client.publish(f"{prefix}/fleet/models/m/infer", b"x", CorrelationData=b"%d" % i)
            wait_for(lambda: len(got_b) == 6, what="b taking all six")
        assert not got_a and {r.source for r in got_b} == {"mqtt-fleet"}

        b.stop()  # b's clean "offline": a is the last member now and resumes by itself
        wait_for(lambda: not a.fleet_paused("m"), what="a resuming")
        with Subscriber(broker, ["t/unused"]) as client:
            client.publish(f"{prefix}/fleet/models/m/infer", b"y", CorrelationData=b"after")
            wait_for(lambda: len(got_a) == 1, what="a taking the next request")
        assert not a.pause_fleet("m"), "no peer left to take the requests"
    finally:
        a.stop()
        b.stop()
