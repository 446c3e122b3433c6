"""A fleet of `edgetpud run` processes on one mosquitto, and a client that talks to the fleet.

Every node is a real daemon subprocess (tests/support/daemon.py) with its own node_id,
state dir and fake-library control file (so its simulated TPUs have their own speed),
and its own slice of the shared umockdev testbed through `devices.allow` globs.

`FleetClient` is what a user's program would be: MQTT 5, requests to
`<prefix>/fleet/models/<model>/infer` with a response topic and correlation data,
at most `window` requests outstanding, optional retry of a request left without an
answer after `retry_after` seconds, and every answer recorded by correlation id so
duplicates are visible rather than hidden. Used by tests/e2e/test_fleet.py and
bench/bench_fleet.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.broker import Broker
from tests.support.daemon import Daemon, config_toml
from tests.support.fakelib import Control
from tests.support.polling import wait_for

PREFIX = "fleet"
GROUP = "boxes"
MODEL = "alpha"
MODEL_FILE = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
INPUT_BYTES = 128 * 128 * 3  # a raw uint8 tensor: no image decoding on the nodes
NO_MATCHING_SUBSCRIBERS = 16  # MQTT 5 PUBACK reason: nobody had the fleet topic subscribed


def node_config(
    workdir: Path,
    name: str,
    port: int,
    models_dir: Path,
    fake_lib: Path,
    *,
    allow: Sequence[str],
    replicas: int,
    queue_size: int,
    group: str = GROUP,
    waiting_timeout: str = "30s",
) -> str:
    ports = ", ".join(f'"{p}"' for p in allow)
    return config_toml(
        node=name,
        state_dir=workdir / "state",
        port=port,
        prefix=PREFIX,
        library=fake_lib,
        daemon=f'stall_timeout = "5s"\ndrain_timeout = "5s"\nwaiting_timeout = "{waiting_timeout}"\n'
        'log_level = "info"\n',
        mqtt="qos = 1\n",
        devices=f'allow = [{ports}]\nfirmware_debounce = "1s"\n',
        rest=f"""[fleet]
group = "{group}"
[models.{MODEL}]
model = "{models_dir / MODEL_FILE}"
labels = "{models_dir / "imagenet_labels.txt"}"
replicas = {replicas}
queue_size = {queue_size}
[models.{MODEL}.postprocess]
type = "classify"
top_k = 1
""",
    )


@dataclass
class Node:
    """One daemon of the fleet and the control file of its simulated TPUs."""

    name: str
    daemon: Daemon
    control: Control
    ports: tuple[str, ...]


@dataclass
class Fleet:
    """Nodes sharing one broker and one umockdev testbed (each with its own USB ports)."""

    tmp: Path
    broker: Broker
    models_dir: Path
    fake_lib: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def add(
        self,
        name: str,
        ports: Sequence[str],
        *,
        invoke_ms: float,
        queue_size: int = 32,
        replicas: int | None = None,
        waiting_timeout: str = "30s",
    ) -> Node:
        workdir = self.tmp / name
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "state").mkdir(exist_ok=True)
        control = Control(workdir / "fake-edgetpu.control")
        # unplug aborts the device host holding the device, as libedgetpu does (#21)
        control.set(mode="simulate", invoke_ms=invoke_ms)
        text = node_config(
            workdir,
            name,
            self.broker.port,
            self.models_dir,
            self.fake_lib,
            allow=ports,
            replicas=replicas or len(ports),
            queue_size=queue_size,
            waiting_timeout=waiting_timeout,
        )
        env = {**control.env(), "STATE_DIRECTORY": str(workdir / "state")}
        node = Node(name, Daemon(workdir, text, env=env), control, tuple(ports))
        self.nodes[name] = node
        node.daemon.start()
        self._wait_listening(node)
        return node

    @staticmethod
    def _wait_listening(node: Node, timeout: float = 60.0) -> None:
        """Return once the node's udev monitor is bound, so the next node binds after it.

        umockdev stands in for the udev netlink socket with a Unix socket named after the
        socket's fd number, `$UMOCKDEV_DIR/event<fd>`, unlinking that name before it binds
        (umockdev src/libumockdev-preload.c, netlink_bind). Two daemons started together get
        the same fd, and one of them failed with EADDRINUSE when their unlink and bind
        interleaved. Even one after the other, the later node takes the name over: only the
        last node started hears uevents, so fleet tests do not hotplug."""

        def listening() -> bool:
            proc = node.daemon.proc
            if proc is not None and proc.poll() is not None:
                raise AssertionError(
                    f"{node.name} exited with {proc.returncode}:\n{node.daemon.log()}"
                )
            return "watching udev for Edge TPUs" in node.daemon.log()

        wait_for(listening, timeout, f"{node.name}'s udev monitor\n{node.daemon.log()[-2000:]}")

    def wait_ready(self, timeout: float = 120.0) -> None:
        for node in self.nodes.values():
            node.daemon.wait_ready(timeout)

    def close(self) -> None:
        for node in self.nodes.values():
            node.daemon.close()


class FleetClient:
    """A user's program: fleet requests with a response topic, a window, retries, dedupe."""

    def __init__(self, broker: Broker, name: str = "client", model: str = MODEL) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self._paho = paho
        self.topic = f"{PREFIX}/fleet/models/{model}/infer"
        # outside the daemons' own prefix, which they refuse as a response topic (docs/mqtt.md)
        self.reply_topic = f"replies/{PREFIX}/{name}"
        self.payload = bytes(range(256)) * (INPUT_BYTES // 256)
        self.answers: dict[str, list[dict[str, Any]]] = {}
        self.sent_at: dict[str, float] = {}  # last send
        self.first_sent: dict[str, float] = {}
        self.sends: dict[str, int] = {}
        self.no_subscribers = 0  # PUBACKs saying the broker had nobody to give the request to
        self.refused_at: list[float] = []  # when each of those PUBACKs came (time.monotonic)
        self._mids: dict[int, str] = {}  # message id -> request id, until its PUBACK
        self._refused: list[str] = []  # refused requests not sent again yet
        self._early: dict[int, bool] = {}  # PUBACKs (refused?) that came before send() kept the mid
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fleet-{name}", protocol=paho.MQTTv5
        )
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(self.reply_topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p=None: self._subscribed.set()
        self.client.on_message = lambda c, u, msg: self._message(msg)
        self.client.on_publish = lambda c, u, mid, rc, p=None: self._published(mid, rc)
        self.broker = broker

    def start(self, timeout: float = 20.0) -> FleetClient:
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"no SUBACK for {self.reply_topic} within {timeout} s")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _published(self, mid: int, rc: Any) -> None:
        with self._cond:
            rid = self._mids.pop(mid, None)
            refused = getattr(rc, "value", rc) == NO_MATCHING_SUBSCRIBERS
            if rid is None:
                self._early[mid] = refused
            if refused:
                self.no_subscribers += 1
                self.refused_at.append(time.monotonic())
                if rid is not None:
                    self._refused.append(rid)

    def _message(self, msg: Any) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        corr = getattr(msg.properties, "CorrelationData", None)
        rid = bytes(corr).decode() if corr else str(body.get("request_id", ""))
        with self._cond:
            self.answers.setdefault(rid, []).append(body)
            self._cond.notify_all()

    def send(self, rid: str) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = rid.encode()
        props.ContentType = "application/octet-stream"
        with self._cond:
            self.sent_at[rid] = time.monotonic()
            self.first_sent.setdefault(rid, self.sent_at[rid])
            self.sends[rid] = self.sends.get(rid, 0) + 1
        # not under the lock: paho calls on_publish holding its own outgoing-message lock
        info = self.client.publish(self.topic, self.payload, qos=1, properties=props)
        with self._cond:
            if self._early.pop(info.mid, False):  # the PUBACK beat us here: it was refused
                self._refused.append(rid)
            else:
                self._mids[info.mid] = rid

    def run(
        self,
        ids: Sequence[str],
        *,
        window: int,
        timeout: float,
        retry_after: float | None = None,
        on_progress: Any = None,
    ) -> float:
        """Send `ids` keeping at most `window` unanswered; returns the seconds it took.

        With `retry_after`, a request still unanswered that long after its last send is
        sent again (same correlation id). A request the broker refused (PUBACK reason 16,
        nobody subscribed at that instant) is sent again on the next turn, 50 ms later.
        Returns when every id has an answer or at `timeout`; the caller checks `answers`.
        """
        pending = list(reversed(ids))
        started = time.monotonic()
        deadline = started + timeout
        outstanding: set[str] = set()
        while time.monotonic() < deadline:
            with self._cond:
                outstanding = {r for r in outstanding if r not in self.answers}
                if not pending and not outstanding:
                    break
                to_send = []
                while pending and len(outstanding) < window:
                    rid = pending.pop()
                    outstanding.add(rid)
                    to_send.append(rid)
                now = time.monotonic()
                retry = (
                    [r for r in outstanding if now - self.sent_at.get(r, now) > retry_after]
                    if retry_after is not None
                    else []
                )
                retry += [r for r in self._refused if r in outstanding and r not in retry]
                self._refused.clear()
            for rid in to_send + retry:
                self.send(rid)
            if on_progress is not None:
                on_progress(self)
            with self._cond:
                self._cond.wait(0.05)
        return time.monotonic() - started

    def answered(self) -> int:
        with self._cond:
            return len(self.answers)

    def by_node(self) -> dict[str, int]:
        """How many requests each node answered (first answer per request)."""
        out: dict[str, int] = {}
        with self._cond:
            for replies in self.answers.values():
                node = str(replies[0].get("node", "?"))
                out[node] = out.get(node, 0) + 1
        return out

    def errors(self) -> dict[str, str]:
        with self._cond:
            return {
                rid: str(r.get("reason") or r.get("error"))
                for rid, replies in self.answers.items()
                for r in replies
                if r.get("schema") == "edgetpud.error/1" or "error" in r
            }

    def duplicates(self) -> dict[str, int]:
        with self._cond:
            return {rid: len(r) for rid, r in self.answers.items() if len(r) > 1}

    def retried(self) -> list[str]:
        with self._cond:
            return [rid for rid, n in self.sends.items() if n > 1]
