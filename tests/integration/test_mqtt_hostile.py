"""Requests built to steer the daemon's publishes, and a broker that refuses them.

Against a real mosquitto, with the stand-in service of test_mqtt_requests.py:

- a response topic under the daemon's own prefix, another node's or Home Assistant's
  topics, a `$` topic, a wildcard or an empty topic is refused before any inference,
  answered on the model's results topic, counted per class in health and logged once;
- `mqtt.response_topics` restricts replies to the filters given;
- a 65,535-byte correlation data routes its reply whole, while the request id in the
  reply's JSON and in the log is cut to 64 characters and a digest;
- with an ACL that denies a topic, the broker's MQTT 5 PUBACK "Not authorized" is
  counted per topic kind in health (`mqtt.publish_denied`) and logged once;
- against the ACL docs/mqtt.md gives, no request, whatever its MQTT 5 properties
  (hypothesis), makes the daemon publish anywhere the ACL does not allow: the broker
  never logs a denied publish from it and the link counts none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetpud.config import MqttConfig
from edgetpud.mqtt import MqttLink
from tests.integration.test_mqtt_requests import (
    INFO,
    MODEL,
    NODE,
    Consumer,
    infer_topic,
    make_link,
    results_topic,
)
from tests.support.broker import Broker, Subscriber
from tests.support.examples import examples
from tests.support.polling import wait_for

HOSTILE = {
    "own": [
        f"edgetpud/{NODE}/status",
        f"edgetpud/{NODE}/health",
        f"edgetpud/{NODE}/events",
        f"edgetpud/{NODE}/models/{MODEL}/results",
        f"edgetpud/{NODE}/models/{MODEL}/infer",  # a request loop
        "edgetpud/other-node/models/x/results",
        "edgetpud/fleet/models/x/infer",
        "edgetpud",
    ],
    "discovery": ["homeassistant/sensor/edgetpud_box1/config", "homeassistant"],
    "system": ["$SYS/broker/x", "$share/g/replies"],
    "wildcard": ["replies/+", "replies/#", "#"],
    "empty": [""],
    "invalid": ["r/" + "x" * 1100],
}


def png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_response_topics_the_rule_refuses_never_get_a_publish_nor_an_inference(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = Consumer()
    link = make_link(broker, consumer, protocol="5")
    caplog.set_level(logging.DEBUG, logger="edgetpud")
    try:
        with Subscriber(broker, ["#"], protocol="5") as sub:
            time.sleep(0.3)  # retained status and health arrive first
            before = {id(m) for m in sub.messages}
            sent = 0
            for klass, topics in HOSTILE.items():
                for i, topic in enumerate(topics):
                    sub.publish(
                        infer_topic(),
                        png(),
                        ResponseTopic=topic,
                        CorrelationData=f"{klass}{i}".encode(),
                    )
                    sent += 1
            got = sub.wait_for(results_topic(), count=sent)
            refusals = [json.loads(m.payload) for m in got]
            assert {r["reason"] for r in refusals} == {"bad_response_topic"}
            assert consumer.seen == []  # refused before any inference
            by_id = {r["request_id"]: r["message"] for r in refusals}
            assert "is under edgetpud/" in by_id["own0"]
            assert "Home Assistant's discovery prefix" in by_id["discovery0"]
            assert "holds a wildcard" in by_id["wildcard0"]
            # nothing the daemon published went to a hostile topic
            new = [m for m in sub.messages if id(m) not in before]
            hostile = {t for ts in HOSTILE.values() for t in ts} - {results_topic()}
            assert [
                m.topic for m in new if m.topic in hostile and m.topic.endswith("results")
            ] == []
            assert all(
                m.topic == results_topic() or m.topic.endswith(("/health", "/status", "/infer"))
                for m in new
            ), sorted({m.topic for m in new})
            stats = link.stats()
            assert stats.response_topics_refused == {k: len(v) for k, v in HOSTILE.items()}
            assert stats.requests_rejected.get("bad_response_topic") == sent
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len([w for w in warnings if "refused a request" in w.getMessage()]) == len(HOSTILE)
    finally:
        link.stop()
        consumer.close()


def test_response_topics_filters_restrict_replies(broker: Broker) -> None:
    consumer = Consumer()
    link = make_link(broker, consumer, protocol="5", response_topics=("replies/+",))
    try:
        with Subscriber(broker, ["replies/#", "elsewhere/#", results_topic()], protocol="5") as sub:
            sub.publish(infer_topic(), png(), ResponseTopic="replies/me", CorrelationData=b"ok")
            sub.publish(infer_topic(), png(), ResponseTopic="elsewhere/x", CorrelationData=b"no")
            (ok,) = sub.wait_for("replies/me")
            assert json.loads(ok.payload)["request_id"] == "ok"
            (refused,) = sub.wait_for(results_topic())
            body = json.loads(refused.payload)
            assert body["reason"] == "bad_response_topic" and body["request_id"] == "no"
            assert "matches none of mqtt.response_topics (replies/+)" in body["message"]
            assert sub.on("elsewhere/#") == []
            assert link.stats().response_topics_refused == {"not_allowed": 1}
    finally:
        link.stop()
        consumer.close()


def test_a_64_kb_correlation_data_routes_whole_and_the_request_id_is_cut(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A 64 KB correlation data became a 128 KB request id in every reply and log line."""
    consumer = Consumer(answer="busy: queue full")
    link = make_link(broker, consumer, protocol="5")
    caplog.set_level(logging.DEBUG, logger="edgetpud")
    big = bytes(range(256)) * 255 + b"\x01" * 255  # 65,535 bytes, MQTT's limit
    try:
        with Subscriber(broker, ["replies/#"], protocol="5") as sub:
            for i in range(10):
                sub.publish(
                    infer_topic(),
                    b"",
                    ResponseTopic="replies/big",
                    CorrelationData=big[:-1] + bytes([i]),
                )
            got = sub.wait_for("replies/big", count=10)
            assert {m.properties.CorrelationData for m in got} == {
                big[:-1] + bytes([i]) for i in range(10)
            }
            ids = {json.loads(m.payload)["request_id"] for m in got}
            assert len(ids) == 10  # cut ids stay distinct
            digest = hashlib.sha256(big[:-1] + b"\x00").hexdigest()[:16]
            assert f"{big.hex()[:64]}...{digest}" in ids
            assert all(len(i) <= 128 for i in ids)
            assert all(len(m.payload) < 1000 for m in got)
        longest = max(len(r.getMessage()) for r in caplog.records)
        assert longest < 1000, longest
    finally:
        link.stop()
        consumer.close()


# ---- a broker that refuses: ACLs ------------------------------------------------------

# What docs/mqtt.md ("Broker ACL") says the daemon's user needs, with
# mqtt.response_topics = ["replies/#"] and Home Assistant discovery on.
DAEMON_ACL = f"""user daemon
topic readwrite edgetpud/{NODE}/#
topic read edgetpud/fleet/#
topic read edgetpud/+/status
topic read edgetpud/+/fleet
topic write homeassistant/#
topic write replies/#

user client
topic write edgetpud/{NODE}/models/+/infer
topic read replies/#
topic read edgetpud/{NODE}/#
"""


def acl_link(broker: Broker, consumer: Consumer, secret: Path, **cfg: Any) -> MqttLink:
    """The link logged in as "daemon", once it answers a probe (its subscription is live)."""
    secret.write_text("pw\n")
    secret.chmod(0o600)
    mqtt_cfg = replace(
        MqttConfig(),
        host=broker.host,
        port=broker.port,
        protocol="5",
        username="daemon",
        password_file=secret,
        **cfg,
    )
    link = MqttLink(mqtt_cfg, NODE, on_request=consumer.on_request)
    consumer.link = link
    link.set_models({MODEL: INFO})
    link.start()
    wait_for(lambda: link.stats().connected, what="the link to connect")
    probe = f"edgetpud/{NODE}/models/probe/results"
    with Subscriber(broker, [probe], protocol="5").login("client", "pw") as sub:
        deadline = time.monotonic() + 30
        while not sub.on(probe):
            assert time.monotonic() < deadline, "the link never answered a probe request"
            sub.publish(f"edgetpud/{NODE}/models/probe/infer", b"probe")
            time.sleep(0.2)
    return link


@pytest.fixture
def acl_broker(tmp_path: Path) -> Any:
    with Broker(
        tmp_path, users={"daemon": "pw", "client": "pw"}, acl=DAEMON_ACL, log_all=True
    ) as b:
        yield b


def test_a_broker_denial_is_counted_per_topic_kind_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the old ACL advice (`<prefix>/<node>/#` only) replies to replies/me and every
    Home Assistant config were denied, and the daemon counted them as published."""
    acl = DAEMON_ACL.replace("topic write homeassistant/#\ntopic write replies/#\n", "")
    caplog.set_level(logging.INFO, logger="edgetpud")
    with Broker(tmp_path, users={"daemon": "pw", "client": "pw"}, acl=acl, log_all=True) as broker:
        consumer = Consumer()
        link = acl_link(broker, consumer, tmp_path / "secret", homeassistant=True)
        try:
            with Subscriber(broker, ["replies/#"], protocol="5").login("client", "pw") as sub:
                for i in range(3):
                    sub.publish(
                        infer_topic(), png(), ResponseTopic="replies/me", CorrelationData=b"%d" % i
                    )
                link.publish_health({"models": {MODEL: {"state": "running"}}, "devices": []})
                wait_for(
                    lambda: (
                        link.stats().publish_denied.get("replies") == 3
                        and link.stats().publish_denied.get("discovery", 0) > 0
                    ),
                    what=f"denials counted (now {link.stats().publish_denied})",
                )
                assert sub.on("replies/#") == []
                denied = [
                    r.getMessage() for r in caplog.records if "refused a publish" in r.getMessage()
                ]
                assert len([d for d in denied if "replies are not delivered" in d]) == 1
                assert "Not authorized" in denied[0]
                assert "publish_denied" in json.dumps(link.stats().as_dict())
                # what the ACL test below looks for in the broker's log is really there
                assert re.search(r"Denied PUBLISH from edgetpud-box1 .*'replies/me'", broker.log())
        finally:
            link.stop()
            consumer.close()


# MQTT strings: mosquitto disconnects a client that sends control characters in one
_printable = st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_categories=("Cc", "Cs"))
ascii_topic = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
response_topics = st.one_of(
    st.none(),
    st.sampled_from([t for ts in HOSTILE.values() for t in ts if len(t) < 200]),
    st.sampled_from(["replies/a", "replies/b/c", "elsewhere", "/", "replies/"]),
    ascii_topic,
    ascii_topic.map(lambda t: "replies/" + t),
    ascii_topic.map(lambda t: f"edgetpud/{NODE}/" + t),
)
requests = st.fixed_dictionaries(
    {
        "ResponseTopic": response_topics,
        "CorrelationData": st.one_of(st.none(), st.binary(max_size=300), st.just(b"\xff" * 65535)),
        "ContentType": st.one_of(
            st.none(),
            st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", ""]),
            st.text(_printable, max_size=80),
        ),
        "UserProperty": st.one_of(
            st.none(),
            st.lists(
                st.tuples(
                    st.sampled_from(["request_id", "x", "response_topic"]),
                    st.text(_printable, max_size=200),
                ),
                max_size=3,
            ),
        ),
        "payload": st.sampled_from([b"", b"junk", None]),
    }
)


def test_no_request_makes_the_daemon_publish_outside_what_the_acl_allows(
    acl_broker: Broker, tmp_path: Path
) -> None:
    """Hypothesis draws every MQTT 5 property of a request; the broker (log_type all)
    would log "Denied PUBLISH from edgetpud-box1" for any publish outside the ACL."""
    consumer = Consumer()
    link = acl_link(
        acl_broker,
        consumer,
        tmp_path / "secret",
        homeassistant=True,
        response_topics=("replies/#",),
    )
    image = png()
    handled = [0]
    try:
        with Subscriber(acl_broker, ["replies/#"], protocol="5").login("client", "pw") as sub:

            @settings(
                max_examples=examples(200),
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(request=requests)
            def one(request: dict[str, Any]) -> None:
                props = {k: v for k, v in request.items() if k != "payload" and v is not None}
                payload = image if request["payload"] is None else request["payload"]
                sub.publish(infer_topic(), payload, **props)
                handled[0] += 1
                wait_for(
                    lambda: _handled(link) >= handled[0],
                    what=f"request {handled[0]} handled ({str(props)[:300]})",
                )

            one()
            link.publish_health({"models": {MODEL: {"state": "running"}}, "devices": []})
            time.sleep(1.0)  # replies and health reach the broker
        assert link.stats().publish_denied == {}
        denied = re.findall(r"Denied PUBLISH from edgetpud-box1.*", acl_broker.log())
        assert denied == [], denied[:5]
    finally:
        link.stop()
        consumer.close()


def _handled(link: MqttLink) -> int:
    stats = link.stats()
    return stats.requests_accepted + sum(stats.requests_rejected.values()) - 1  # - the probe


assert INFO  # the stand-in model
