#!/usr/bin/env python3
"""What one pass through mosquitto costs on this machine, with and without paho.

Benchmark 3's request path crosses the broker twice (request in, reply out). This
measures one crossing on its own: a publisher sends paced QoS 0 messages (100/s) to a
subscriber through a local mosquitto (set_tcp_nodelay, as the other benchmarks' broker),
and the subscriber timestamps each arrival. Two client kinds:

- inline: a blocking socket speaking just enough MQTT 3.1.1 (CONNECT, SUBSCRIBE,
  PUBLISH); one thread publishes, then reads the message back on the subscriber's
  socket: the floor of the broker, TCP loopback and this VM's wake-ups;
- raw: the same clients, the subscriber read by its own thread (one more wake-up);
- paho: paho-mqtt clients with loop_start(), as edgetpud and the load generator use.

Figure: p50/p90 of (arrival - send) in ms, per client kind and payload size. The
last line of output is the figures as JSON (written to bench/results/mqtt_floor.json too).

    .venv/bin/python -m bench.investigations.mqtt_floor [--count 400]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench import common, rawmqtt
from tests.support.broker import Broker

TOPIC = "floor/t"
SIZES = (100, 49152)
RATE = 100.0


class RawClient:
    """bench/rawmqtt.py speaking MQTT 3.1.1 at QoS 0 on TOPIC."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = rawmqtt.RawClient("127.0.0.1", port, client_id, version=4)

    def publish(self, payload: bytes) -> None:
        self.client.publish(TOPIC, payload)

    def subscribe(self, on_payload: Callable[[bytes], None] | None = None) -> None:
        """Subscribe; with `on_payload`, a thread reads and hands it every message."""
        deliver = None if on_payload is None else (lambda msg: on_payload(msg.payload))
        self.client.subscribe(TOPIC, 0, deliver)

    def next_payload(self) -> bytes:
        """Block until the next message; its payload."""
        return self.client.next_message().payload

    def close(self) -> None:
        self.client.close()


class PahoClient:
    """paho with its network thread, as edgetpud runs it."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.connect("127.0.0.1", port)
        self.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()

    def publish(self, payload: bytes) -> None:
        self.client.publish(TOPIC, payload, qos=0)

    def subscribe(self, on_payload: Callable[[bytes], None]) -> None:
        done = threading.Event()
        self.client.on_message = lambda c, u, msg: on_payload(msg.payload)
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(TOPIC, 0)
        if not done.wait(10):
            raise TimeoutError("no SUBACK from the broker within 10 s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def one_way(kind: str, port: int, size: int, count: int) -> dict[str, float]:
    """Paced messages from a publisher to a subscriber; arrival - send, in ms."""
    make: Any = PahoClient if kind == "paho" else RawClient
    arrived: dict[int, float] = {}

    def arrive(payload: bytes) -> None:
        arrived.setdefault(int(payload[:8]), time.time())

    sub = make(port, f"floor-sub-{kind}-{size}")
    sub.subscribe(None if kind == "inline" else arrive)
    pub = make(port, f"floor-pub-{kind}-{size}")
    time.sleep(0.3)
    sent: dict[int, float] = {}
    pad = b"x" * (size - 8)
    due = time.monotonic()
    for i in range(count):
        sent[i] = time.time()
        pub.publish(b"%08d" % i + pad)
        if kind == "inline":
            arrive(sub.next_payload())
        due += 1.0 / RATE
        time.sleep(max(0.0, due - time.monotonic()))
    deadline = time.monotonic() + 10
    while len(arrived) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    pub.close()
    sub.close()
    ms = sorted((arrived[i] - sent[i]) * 1000.0 for i in sent if i in arrived)
    if len(ms) < count:
        raise RuntimeError(f"{kind}, {size} B: {count - len(ms)} of {count} messages never arrived")
    return {"p50_ms": round(ms[len(ms) // 2], 3), "p90_ms": round(ms[int(len(ms) * 0.9)], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400, help="messages per case (default 400)")
    args = parser.parse_args()
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp), nodelay=True).start()
        try:
            for kind in ("inline", "raw", "paho"):
                for size in SIZES:
                    figures[f"{kind}_{size}B"] = fig = one_way(kind, broker.port, size, args.count)
                    print(f"{kind:6} {size:6} B one way: p50 {fig['p50_ms']:.3f} ms, "
                          f"p90 {fig['p90_ms']:.3f} ms", flush=True)  # fmt: skip
        finally:
            broker.stop()
    print(json.dumps(figures))
    record = common.new_record("mqtt_floor", False, {"count": args.count, "rate_per_s": RATE})
    common.write_record("mqtt_floor", {**record, "figures": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
