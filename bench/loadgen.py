"""An MQTT 5 load generator: requests to `…/models/<m>/infer` with a response topic and
correlation data, and the time each reply arrived.

It speaks MQTT through bench/rawmqtt.py rather than paho, so that it adds as little as it
can to what it measures: a request is written from the sending thread, and a reply is
timestamped by a thread blocked in recv() the moment its bytes are parsed (a paho client
would add a hop through its network thread at each end, 0.1-0.3 ms here)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.rawmqtt import CONTENT_TYPE, CORRELATION_DATA, RESPONSE_TOPIC, Message, RawClient
from tests.support.polling import wait_for


@dataclass
class Reply:
    rid: str
    sent: float  # time.time() just before the request was written
    received: float  # time.time() when the reply had been read
    device: str
    error: str
    timing: dict[str, float] = field(default_factory=dict)
    daemon_received: float = 0.0  # the reply's received_at (the daemon's clock = ours)
    daemon_finished: float = 0.0  # the reply's finished_at


class LoadGen:
    """Publishes requests and matches replies by correlation data."""

    def __init__(self, host: str, port: int, base: str, name: str = "loadgen") -> None:
        self.base = base
        self.reply_topic = f"replies/{name}"  # not under the daemon's prefix (refused there)
        self.sent: dict[str, float] = {}
        self.replies: dict[str, Reply] = {}
        self.duplicates = 0
        self._lock = threading.Lock()
        self.client = RawClient(host, port, f"bench-{name}")
        self.client.subscribe(self.reply_topic, qos=1, on_message=self._on_message)

    def send(self, model: str, rid: str, payload: bytes, qos: int = 1) -> None:
        props = {
            RESPONSE_TOPIC: self.reply_topic.encode(),
            CORRELATION_DATA: rid.encode(),
            CONTENT_TYPE: b"application/octet-stream",
        }
        topic = f"{self.base}/models/{model}/infer"
        now = time.time()
        with self._lock:
            self.sent[rid] = now
        self.client.publish(topic, payload, qos=qos, props=props)

    def _on_message(self, msg: Message) -> None:
        now = time.time()
        rid = msg.props.get(CORRELATION_DATA, b"").decode(errors="replace")
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
        self.client.close()


def around_a_fault(
    gen: LoadGen,
    payloads: dict[str, bytes],
    fault: Callable[[], float],
    *,
    rate: float,
    before: float,
    after: float,
) -> tuple[float, int, int]:
    """Paced requests to every model of `payloads` (ids `<model>-<n>`, `rate` rounds a
    second): `before` seconds, then `fault()` once replies come (it does the harm and returns
    the time.time() it did it at), `after` seconds more; then every reply is awaited.
    Returns (the fault's time, requests sent, requests lost); raises RuntimeError naming how
    many requests were never answered."""
    n = 0

    def send_for(seconds: float) -> None:
        nonlocal n
        due = time.monotonic()
        end = due + seconds
        while due < end:
            for m, payload in payloads.items():
                gen.send(m, f"{m}-{n}", payload)
            n += 1
            due += 1.0 / rate
            time.sleep(max(0.0, due - time.monotonic()))

    try:
        send_for(before)
        wait_for(lambda: gen.answered() >= len(payloads) * 10, 60, "replies")
        t_fault = fault()
        send_for(after)
        sent = len(gen.sent)
        wait_for(lambda: gen.answered() >= sent, 60, "every reply (none lost)")
    except AssertionError:
        lost = len(gen.sent) - gen.answered()
        raise RuntimeError(f"{lost} request(s) never answered") from None
    return t_fault, sent, sent - gen.answered()
