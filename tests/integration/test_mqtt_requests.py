"""MQTT requests in, results and error replies out, against a real mosquitto.

A tiny in-test consumer stands in for the service: it takes the Requests the link
accepts, reads each image with Pillow (or checks a tensor's size) and publishes a
Result. Runs with paho 2.x (.venv) and paho 1.6 (.venv-paho16, `make test-paho16`).
"""

from __future__ import annotations

import hashlib
import io
import json
import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edgetpud.config import MqttConfig
from edgetpud.messages import Request, Result, Timing
from edgetpud.mqtt import MqttLink, _ReplyProperties
from tests.support.broker import Broker, Subscriber
from tests.support.polling import wait_for

NODE = "box1"
MODEL = "birds"
SHAPE = (1, 128, 128, 3)
NBYTES = 128 * 128 * 3


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Info:
    inputs: tuple[Spec, ...]


INFO = Info((Spec("input", SHAPE, "uint8"),))


class Consumer:
    """Stands in for the service: queue the request, answer it from a worker thread."""

    def __init__(self, answer: str | None = None) -> None:
        self.answer = answer
        self.seen: list[Request] = []
        self.q: queue.Queue[Request | None] = queue.Queue()
        self.link: MqttLink | None = None
        self.thread = threading.Thread(target=self.run, name="worker:test", daemon=True)
        self.thread.start()

    def on_request(self, request: Request) -> str | None:
        if self.answer:
            return self.answer
        self.seen.append(request)
        self.q.put(request)
        return None

    def run(self) -> None:
        while (req := self.q.get()) is not None:
            if req.kind == "image":
                with Image.open(io.BytesIO(req.payload)) as im:
                    output: dict[str, Any] = {
                        "kind": "image",
                        "format": im.format,
                        "size": list(im.size),
                    }
            else:
                output = {"kind": "tensor", "nbytes": len(req.payload)}
            assert self.link is not None
            self.link.publish_result(
                Result(req, "usb:2-1", output, timing=Timing(0.1, 1.0, 2.5, 0.2))
            )

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(10)


def make_link(broker: Broker, consumer: Consumer, **cfg: Any) -> MqttLink:
    max_pixels = cfg.pop("max_pixels", 40_000_000)
    mqtt_cfg = replace(MqttConfig(), host=broker.host, port=broker.port, **cfg)
    link = MqttLink(mqtt_cfg, NODE, on_request=consumer.on_request, max_pixels=max_pixels)
    consumer.link = link
    link.set_models({MODEL: INFO})
    link.start()
    wait_for(lambda: link.stats().connected, what="the link to connect")
    # "connected" comes with the CONNACK; the link subscribes to its request topics right
    # after. A request published before that SUBSCRIBE reaches the broker is dropped, so
    # wait until a probe for an unknown model is answered (counted as unknown_model).
    probe = f"edgetpud/{NODE}/models/probe/results"
    with Subscriber(broker, [probe], protocol=str(cfg.get("protocol", "5"))) as sub:
        deadline = time.monotonic() + 30
        while not sub.on(probe):
            assert time.monotonic() < deadline, "the link never answered a probe request"
            sub.publish(f"edgetpud/{NODE}/models/probe/infer", b"probe")
            time.sleep(0.2)
    return link


@pytest.fixture
def images(models_dir: Path, tmp_path: Path) -> dict[str, bytes]:
    out = {"bmp": (models_dir / "bird.bmp").read_bytes()}
    with Image.open(models_dir / "bird.bmp") as im:
        for fmt in ("JPEG", "PNG"):
            buf = io.BytesIO()
            im.convert("RGB").save(buf, fmt)
            out[fmt.lower()] = buf.getvalue()
    return out


def results_topic(model: str = MODEL) -> str:
    return f"edgetpud/{NODE}/models/{model}/results"


def infer_topic(model: str = MODEL) -> str:
    return f"edgetpud/{NODE}/models/{model}/infer"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("kind", ["jpeg", "png", "bmp", "tensor"])
def test_round_trip_of_each_payload_kind(
    broker: Broker, images: dict[str, bytes], protocol: str, kind: str
) -> None:
    consumer = Consumer()
    link = make_link(broker, consumer, protocol=protocol)
    try:
        with Subscriber(broker, [results_topic()], protocol=protocol) as sub:
            body = bytes(range(256)) * (NBYTES // 256) if kind == "tensor" else images[kind]
            sub.publish(infer_topic(), body)
            (msg,) = sub.wait_for(results_topic())
            result = json.loads(msg.payload)
            assert result["schema"] == "edgetpud.result/1"
            assert result["model"] == MODEL
            assert result["device"] == "usb:2-1"
            assert result["node"] == NODE
            assert result["source"] == "mqtt"
            assert result["request_id"] == consumer.seen[0].id
            assert set(result["timing"]) >= {
                "queue_ms",
                "preprocess_ms",
                "invoke_ms",
                "postprocess_ms",
            }
            if kind == "tensor":
                assert consumer.seen[0].kind == "tensor"
                assert result["result"] == {"kind": "tensor", "nbytes": NBYTES}
            else:
                assert consumer.seen[0].kind == "image"
                assert consumer.seen[0].payload == body
                assert result["result"]["format"] == kind.upper()
                assert result["result"]["size"] == [
                    result["meta"]["width"],
                    result["meta"]["height"],
                ]
    finally:
        link.stop()
        consumer.close()
    assert link.stats().requests_accepted == 1


def test_response_topic_and_correlation_data_are_honoured(
    broker: Broker, images: dict[str, bytes]
) -> None:
    consumer = Consumer()
    link = make_link(broker, consumer, protocol="5")
    try:
        with Subscriber(broker, ["replies/#", results_topic()], protocol="5") as sub:
            sub.publish(
                infer_topic(), images["png"], ResponseTopic="replies/me", CorrelationData=b"req-42"
            )
            sub.publish(
                infer_topic(),
                images["jpeg"],
                ResponseTopic="replies/bin",
                CorrelationData=b"\x00\xff",
            )
            long_id = bytes(range(256)) * 2  # properties longer than 127 bytes: 2-byte length
            sub.publish(
                infer_topic(), images["png"], ResponseTopic="replies/long", CorrelationData=long_id
            )
            (text,) = sub.wait_for("replies/me")
            (binary,) = sub.wait_for("replies/bin")
            (lengthy,) = sub.wait_for("replies/long")
            assert text.properties.CorrelationData == b"req-42"
            assert text.properties.ContentType == "application/json"
            assert lengthy.properties.CorrelationData == long_id
            # the reply routes by the full correlation data; the id in JSON and logs is cut
            # to its start and a digest (issue 26: 64 KB correlation data, 128 KB ids)
            digest = hashlib.sha256(long_id).hexdigest()[:16]
            assert json.loads(lengthy.payload)["request_id"] == f"{long_id.hex()[:64]}...{digest}"
            assert json.loads(text.payload)["request_id"] == "req-42"
            assert binary.properties.CorrelationData == b"\x00\xff"
            assert json.loads(binary.payload)["request_id"] == "00ff"
            assert sub.on(results_topic()) == []
    finally:
        link.stop()
        consumer.close()


def test_request_id_user_property_is_used(broker: Broker, images: dict[str, bytes]) -> None:
    consumer = Consumer()
    link = make_link(broker, consumer, protocol="5")
    try:
        with Subscriber(broker, [results_topic()], protocol="5") as sub:
            sub.publish(infer_topic(), images["bmp"], UserProperty=[("request_id", "cam3-0017")])
            (msg,) = sub.wait_for(results_topic())
            assert json.loads(msg.payload)["request_id"] == "cam3-0017"
    finally:
        link.stop()
        consumer.close()


def _png_header_only() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    return buf.getvalue()[:20]  # signature + a cut IHDR


BAD = {
    "bad_size": (infer_topic(), b"\x01" * 1000, {}),
    "bad_image": (infer_topic(), _png_header_only(), {}),
    "too_large": (infer_topic(), b"\x00" * 70_000, {}),
    "unknown_model": (infer_topic("cats"), b"\x00" * NBYTES, {}),
    "image_too_large": (infer_topic(), "png", {}),
    "bad_content_type": (infer_topic(), "jpeg", {"ContentType": "text/plain"}),
    "busy": (infer_topic(), "bmp", {}),
}


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_input_gets_an_error_reply_and_never_reaches_a_worker(
    broker: Broker, images: dict[str, bytes], protocol: str, reason: str
) -> None:
    topic, body, props = BAD[reason]
    if protocol != "5" and props:
        pytest.skip("content types need MQTT 5")
    if isinstance(body, str):
        body = images[body]
    consumer = Consumer(
        answer="busy: queue full (32 waiting); retry later" if reason == "busy" else None
    )
    limits: dict[str, Any] = {
        "too_large": {"max_request_bytes": 60_000},
        "image_too_large": {"max_pixels": 100 * 100},
    }.get(reason, {})
    link = make_link(broker, consumer, protocol=protocol, **limits)
    model = topic.split("/")[-2]
    try:
        with Subscriber(broker, ["edgetpud/#", "replies/#"], protocol=protocol) as sub:
            if protocol == "5":
                sub.publish(topic, body, ResponseTopic="replies/x", CorrelationData=b"c1", **props)
                (msg,) = sub.wait_for("replies/x")
                assert msg.properties.CorrelationData == b"c1"
            else:
                sub.publish(topic, body)
                (msg,) = sub.wait_for(results_topic(model))
            error = json.loads(msg.payload)
            assert error["schema"] == "edgetpud.error/1"
            assert error["reason"] == reason
            assert error["model"] == model
            assert error["message"]
            # the link keeps serving: a good request after the bad one still works
            sub.publish(infer_topic(), b"\x00" * NBYTES)
            if reason != "busy":
                wait_for(lambda: len(consumer.seen) == 1, what="the good request")
    finally:
        link.stop()
        consumer.close()
    assert all(r.payload == b"\x00" * NBYTES for r in consumer.seen)
    assert link.stats().requests_rejected[reason] >= 1


def test_events_and_health(broker: Broker) -> None:
    consumer = Consumer()
    link = make_link(broker, consumer)
    try:
        with Subscriber(broker, [f"edgetpud/{NODE}/events", f"edgetpud/{NODE}/health"]) as sub:
            link.publish_event({"event": "device_added", "device": "usb:2-1"})
            (msg,) = sub.wait_for(f"edgetpud/{NODE}/events")
            event = json.loads(msg.payload)
            assert event["schema"] == "edgetpud.event/1"
            assert event["event"] == "device_added"
            assert not msg.retain
            link.publish_health({"daemon": {"version": "0.1.0"}, "devices": [], "models": {}})
            sub.wait_for(f"edgetpud/{NODE}/health")  # it reached the broker
        with Subscriber(broker, [f"edgetpud/{NODE}/health"]) as late:
            (msg,) = late.wait_for(f"edgetpud/{NODE}/health")
            health = json.loads(msg.payload)
            assert msg.retain
            assert health["schema"] == "edgetpud.health/1"
            assert health["mqtt"]["connected"] is True
    finally:
        link.stop()
        consumer.close()


@pytest.mark.parametrize(
    ("content_type", "correlation"),
    [
        ("application/json", b"req-42"),
        ("application/json", None),
        ("application/json", b""),
        ("x" * 300, bytes(range(256)) * 4),
    ],
)
def test_reply_properties_encode_as_paho_does(content_type: str, correlation: bytes | None) -> None:
    # the link encodes a reply's properties itself (paho's Properties costs 0.1 ms a reply)
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    expected = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    expected.ContentType = content_type
    if correlation is not None:
        expected.CorrelationData = correlation
    ours = _ReplyProperties(content_type, correlation)
    assert ours.pack() == expected.pack()
    assert str(ours) == str(expected)
