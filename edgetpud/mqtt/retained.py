"""Reading retained topics once (what `edgetpud status` shows); paho only through transport."""

from __future__ import annotations

import threading
import time
from typing import Any

from edgetpud import broker_probe
from edgetpud.config import MqttConfig
from edgetpud.messages import new_request_id
from edgetpud.mqtt import transport
from edgetpud.mqtt.topics import Incoming


def read_retained(cfg: MqttConfig, topic_filter: str, timeout: float = 5.0) -> dict[str, bytes]:
    """Connect, collect the retained messages on `topic_filter`, disconnect.

    Raises ConnectionError with what to check when the broker cannot be reached in time.
    """
    got: dict[str, bytes] = {}
    state = {"rc": -1, "subscribed": 0.0, "last": 0.0}
    refusal: list[str] = []  # the CONNACK's reason as text
    done = threading.Event()
    lock = threading.Lock()

    def connected(rc: Any) -> None:
        state["rc"] = transport.rc_value(rc)
        refusal.append(transport.rc_text(rc))
        if state["rc"] == 0:
            client.subscribe(topic_filter, qos=1)
        else:
            done.set()

    def subscribed() -> None:
        state["subscribed"] = state["last"] = time.monotonic()

    def message(msg: Incoming) -> None:
        if msg.retain:
            with lock:
                got[msg.topic] = msg.payload
                state["last"] = time.monotonic()

    client = transport.simple_client(
        cfg,
        f"edgetpud-status-{new_request_id()}",
        on_connect=connected,
        on_subscribe=subscribed,
        on_message=message,
    )
    try:
        client.connect(cfg.host, cfg.port, keepalive=30)
    except OSError as exc:
        cause = broker_probe.probe(cfg) or f"{exc}; check mqtt.host and mqtt.port"
        raise ConnectionError(
            f"cannot reach the MQTT broker {cfg.host}:{cfg.port}: {cause}"
        ) from None
    client.loop_start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done.is_set():
            if state["subscribed"] and time.monotonic() - state["last"] > 0.3:
                break  # retained messages arrive right after SUBACK; 0.3 s of quiet ends them
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    if state["rc"] > 0:
        raise ConnectionError(_refused(cfg, int(state["rc"]), refusal))
    if not state["subscribed"]:
        cause = (
            broker_probe.probe(cfg) or "check that it runs and that mqtt.host/port/tls are right"
        )
        raise ConnectionError(
            f"no answer from the MQTT broker {cfg.host}:{cfg.port} within {timeout:.0f} s: {cause}"
        )
    return got


def _refused(cfg: MqttConfig, code: int, refusal: list[str]) -> str:
    hint = (
        "check mqtt.username, the password in mqtt.password_file and the broker's ACL"
        if code in transport.AUTH_REFUSED
        else "see the broker's log for why"
    )
    return (
        f"the MQTT broker {cfg.host}:{cfg.port} refused the connection "
        f"({refusal[-1] + ', ' if refusal else ''}code {code}); {hint}"
    )
