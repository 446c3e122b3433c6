#!/usr/bin/env python3
"""A baseline for bench/request_path.py: answers every `<base>/models/+/infer` request on its
MQTT 5 response topic at once (no inference), so that the round trip through the broker on
this machine, right now, can be set beside edgetpud's.

A bare paho client with loop_start(), as edgetpud runs paho: what any paho-based
responder costs before it does any work. The plain-socket responders that found the
floor below it are bench/investigations/raw_echo.py.

    .venv/bin/python -m bench.echo_responder --port 1883 --base bench/box
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPLY = b'{"device": "echo"}'


def serve_paho(
    host: str, port: int, requests: str, stop: threading.Event, wait_ms: float = 0.0
) -> None:
    del wait_ms  # answers at once
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


Serve = Callable[[str, int, str, threading.Event, float], None]


def main(doc: str | None, servers: dict[str, Serve]) -> int:
    """The command line of an echo responder: `--port --base [--client NAME] [--wait-ms]`;
    serves `<base>/models/+/infer` with `servers[NAME]` until SIGTERM."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--client", choices=tuple(servers), default=next(iter(servers)))
    p.add_argument(
        "--wait-ms", type=float, default=0.0, help="sleep this long before answering, if it can"
    )
    args = p.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    servers[args.client](args.host, args.port, f"{args.base}/models/+/infer", stop, args.wait_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(__doc__, {"paho": serve_paho}))
