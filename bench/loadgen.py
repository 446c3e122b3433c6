"""An MQTT 5 load generator: requests to `…/models/<m>/infer` with a response topic and
correlation data, and the time each reply arrived (paho, in the benchmark process)."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass
class Reply:
    rid: str
    sent: float  # time.time() just before publish
    received: float  # time.time() in the on_message callback
    device: str
    error: str
    timing: dict[str, float] = field(default_factory=dict)
    daemon_received: float = 0.0  # the reply's received_at (the daemon's clock = ours)
    daemon_finished: float = 0.0  # the reply's finished_at


class LoadGen:
    """Publishes requests and matches replies by correlation data."""

    def __init__(self, host: str, port: int, base: str, name: str = "loadgen") -> None:
        self.base = base
        self.reply_topic = f"bench/replies/{name}"
        self.sent: dict[str, float] = {}
        self.replies: dict[str, Reply] = {}
        self.duplicates = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{name}", protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(self.reply_topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        if not self._subscribed.wait(30):
            raise TimeoutError("the load generator got no SUBACK within 30 s")

    def send(self, model: str, rid: str, payload: bytes, qos: int = 1) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = rid.encode()
        props.ContentType = "application/octet-stream"
        now = time.time()
        with self._lock:
            self.sent[rid] = now
        self.client.publish(f"{self.base}/models/{model}/infer", payload, qos=qos, properties=props)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        corr = getattr(msg.properties, "CorrelationData", None)
        rid = corr.decode(errors="replace") if corr else ""
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {}
        with self._lock:
            if rid in self.replies:
                self.duplicates += 1
                return
            self.replies[rid] = Reply(
                rid,
                self.sent.get(rid, 0.0),
                now,
                str(body.get("device", "")),
                str(body.get("error", "")),
                dict(body.get("timing") or {}),
                float(body.get("received_at") or 0.0),
                float(body.get("finished_at") or 0.0),
            )

    def outstanding(self) -> int:
        with self._lock:
            return len(self.sent) - len(self.replies)

    def answered(self) -> int:
        with self._lock:
            return len(self.replies)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
