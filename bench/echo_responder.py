#!/usr/bin/env python3
"""A baseline for bench/request_path.py: answers every `<base>/models/+/infer` request on its
MQTT 5 response topic at once (no inference), so the round trip through paho and mosquitto
on this machine, right now, can be subtracted from edgetpud's.

    .venv/bin/python bench/echo_responder.py --port 1883 --base bench/box
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--base", required=True)
    args = p.parse_args()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: Any, u: Any, msg: Any) -> None:
        topic = getattr(msg.properties, "ResponseTopic", None)
        if not topic:
            return
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = getattr(msg.properties, "CorrelationData", b"")
        c.publish(topic, b'{"device": "echo"}', qos=1, properties=props)

    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"{args.base}/models/+/infer", 1)
    client.on_message = on_message
    client.connect(args.host, args.port)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
