#!/usr/bin/env python3
"""A baseline for bench/request_path.py: answers every `<base>/models/+/infer` request on its
MQTT 5 response topic at once (no inference), so that the round trip through the broker on
this machine, right now, can be set beside edgetpud's.

- `--client paho` (default): a bare paho client with loop_start(), as edgetpud runs paho:
  what any paho-based responder costs before it does any work;
- `--client raw`: bench/rawmqtt.py, answering from the thread that read the request: the
  floor of the broker, TCP loopback and this VM's wake-ups;
- `--client rawthread`: the same, answering from a worker thread the reader hands each
  request to; with `--wait-ms 2.6` the worker first sleeps as a simulated invoke does.

    .venv/bin/python bench/echo_responder.py --port 1883 --base bench/box [--client raw]
"""

from __future__ import annotations

import argparse
import ctypes
import queue
import signal
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rawmqtt import CORRELATION_DATA, RESPONSE_TOPIC, Message, RawClient

REPLY = b'{"device": "echo"}'
PR_SET_TIMERSLACK = 29


def serve_paho(host: str, port: int, requests: str, stop: threading.Event) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: Any, u: Any, msg: Any) -> None:
        topic = getattr(msg.properties, "ResponseTopic", None)
        if not topic:
            return
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = getattr(msg.properties, "CorrelationData", b"")
        c.publish(topic, REPLY, qos=1, properties=props)

    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(requests, 1)
    client.on_message = on_message
    client.connect(host, port)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


def reply(client: RawClient, msg: Message) -> None:
    """Answer `msg` on its MQTT 5 response topic, if it has one."""
    topic = msg.props.get(RESPONSE_TOPIC)
    if topic:
        corr = {CORRELATION_DATA: msg.props.get(CORRELATION_DATA, b"")}
        client.publish(topic.decode(), REPLY, qos=1, props=corr)


def serve_raw(host: str, port: int, requests: str, stop: threading.Event) -> None:
    client = RawClient(host, port, "bench-echo-responder")
    client.subscribe(requests, qos=1, on_message=lambda msg: reply(client, msg))
    stop.wait()
    client.close()


def serve_raw_thread(
    host: str, port: int, requests: str, stop: threading.Event, wait_ms: float = 0.0
) -> None:
    """As serve_raw, but the reading thread hands each request to a worker thread, which
    answers: the least any responder with a worker thread per model pays here. With
    `wait_ms`, the worker first sleeps that long as the fake libedgetpu's simulated
    invoke does (1 ns of timer slack), so the figure also holds the device's wake-up."""
    client = RawClient(host, port, f"bench-echo-responder-thread-{wait_ms:g}")
    inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()

    def work() -> None:
        if wait_ms:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        while not stop.is_set():
            try:
                msg = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if wait_ms:
                time.sleep(wait_ms / 1000.0)  # clock_nanosleep, as the fake library sleeps
            reply(client, msg)

    worker = threading.Thread(target=work, name="echo:worker", daemon=True)
    worker.start()
    client.subscribe(requests, qos=1, on_message=inbox.put)
    stop.wait()
    worker.join()
    client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--client", choices=("paho", "raw", "rawthread"), default="paho")
    p.add_argument(
        "--wait-ms", type=float, default=0.0, help="rawthread: sleep this long before answering"
    )
    args = p.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    requests = f"{args.base}/models/+/infer"
    if args.client == "rawthread":
        serve_raw_thread(args.host, args.port, requests, stop, args.wait_ms)
    elif args.client == "raw":
        serve_raw(args.host, args.port, requests, stop)
    else:
        serve_paho(args.host, args.port, requests, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
