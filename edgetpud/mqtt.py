"""The MQTT link: results, health, events and availability out; requests in.

The only module that imports paho. Works with paho-mqtt 1.6 (Debian 12) and 2.x
(PyPI), MQTT 3.1.1 and 5, TCP, websockets and TLS.

Publishing never blocks the caller: `publish_result` / `publish_event` encode the
payload and append it to one ordered outbox; a sender thread hands the outbox to
paho while connected. While the broker is away the outbox is the backlog: bounded
by `mqtt.backlog_limit`, oldest dropped (and counted) beyond it, delivered in order
after reconnect. Messages paho held when the link broke (QoS 1/2) are resent by
paho first; the sender waits for them before it sends anything newer, so order
holds across an outage. Contract and payloads: docs/mqtt.md.

With `mqtt.qos = 0` every outbox message is QoS 0 and the link needs no callback
per message: it asks each message's MQTTMessageInfo whether paho wrote it. paho 2
builds a ReasonCode and a Properties object for every on_publish call, which was a
fifth of the CPU a QoS 0 result cost (bench/bench_mqtt.py cpu).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from edgetpud import __version__, broker_probe, payloads
from edgetpud.config import MqttConfig
from edgetpud.errors import ConfigUnreadableError
from edgetpud.messages import ReplyTo, Request, Result, new_request_id

try:
    from paho.mqtt.enums import CallbackAPIVersion

    PAHO2 = True
except ImportError:  # paho-mqtt 1.x
    PAHO2 = False

log = logging.getLogger(__name__)


class _Client(paho.Client):
    """paho's client, reading every packet already in the socket before it writes.

    paho reads one packet per turn of its loop when it holds no message of its own (an
    idle daemon), then writes that request's PUBACK. When the broker has died, the write
    fails and paho drops the connection with whatever is still unread: requests the broker
    delivered, and acknowledged to their senders, before it died. paho took 2 of 50 such
    requests (tests/integration/test_mqtt_link.py); this takes all of them."""

    def loop_read(self, max_packets: int = 1) -> Any:
        rc = super().loop_read(max_packets)
        for _ in range(READ_BURST):
            if rc or not self._unread():
                break
            rc = super().loop_read(max_packets)
        return rc

    def _unread(self) -> bool:
        """Whether the socket holds data paho has not read (without blocking)."""
        sock = self._sock
        if sock is None:
            return False
        pending = getattr(sock, "pending", None)  # TLS: decrypted bytes select() cannot see
        if pending is not None and pending():
            return True
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):  # closed meanwhile
            return False


class _Paho16Client(_Client):
    """paho 1.6 (Debian 12's) with a TLS error on the socket treated as a lost connection.

    paho 1.6 catches only ConnectionError around its socket reads and writes; an
    ssl.SSLError (a TLS alert: the broker refusing the client certificate, a corrupt
    record) escapes its network thread, which dies and never reconnects. paho 2 treats
    such an error as a lost connection and reconnects; this makes 1.6 do the same.
    """

    def _sock_recv(self, bufsize: int) -> bytes:
        try:
            return super()._sock_recv(bufsize)
        except ssl.SSLError as exc:
            raise ConnectionError(f"TLS: {exc}") from exc

    def _sock_send(self, buf: bytes | bytearray) -> int:
        try:
            return super()._sock_send(buf)
        except ssl.SSLError as exc:
            raise ConnectionError(f"TLS: {exc}") from exc


_PUBLISH_TEMPLATE = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


class _ReplyProperties(Properties):
    """The MQTT 5 properties of a reply (content type, correlation data), encoded once.

    paho's Properties checks every assignment against its table of property names and
    walks the table again in pack(): queuing a reply took 0.38 ms (p50, paced, this VM),
    0.27 ms with this. It builds the same bytes directly (a test compares them with
    paho's) and stays a Properties for everything else (str(), resends)."""

    _packed: bytes

    def __init__(self, content_type: str, correlation: bytes | None) -> None:
        # paho's read-only tables, shared instead of rebuilt per message
        for name in ("packetType", "types", "names", "properties"):
            object.__setattr__(self, name, getattr(_PUBLISH_TEMPLATE, name))
        object.__setattr__(self, "ContentType", content_type)
        ctype = content_type.encode()
        body = b"\x03" + len(ctype).to_bytes(2, "big") + ctype
        if correlation is not None:
            object.__setattr__(self, "CorrelationData", correlation)
            body += b"\x09" + len(correlation).to_bytes(2, "big") + correlation
        packed = VariableByteIntegers.encode(len(body)) + body  # type: ignore[no-untyped-call]
        object.__setattr__(self, "_packed", packed)

    def pack(self) -> bytes:
        return self._packed


def _paho_client(**kw: Any) -> Any:
    """A paho client with the version 2 callback API on paho 2, or a TLS-safe 1.6 one."""
    return _Client(CallbackAPIVersion.VERSION2, **kw) if PAHO2 else _Paho16Client(**kw)


ONLINE = b"online"
OFFLINE = b"offline"
WINDOW = 1000  # messages handed to paho but not yet confirmed written/acknowledged
DIRECT_RESERVE = 4  # of a broker's Receive Maximum, kept for online/health/discovery
BATCH = 256  # messages handed to paho per turn of the sender
QUICK_LOSS_S = 10.0  # a connection lost this soon after it was made may be a client id clash
ROOM_WAIT_S = 1.0  # how long a result waits for room while connected and the outbox is full
READ_BURST = 1000  # more loop_read() calls per turn of paho's loop, while data is waiting
RESEND_WAIT = 10.0  # after reconnect, how long to wait for paho's resends before moving on
AUTH_REFUSED = {4, 5, 134, 135}  # 3.1.1 and MQTT 5 codes for bad credentials / not authorised


class _Spec(Protocol):
    @property
    def nbytes(self) -> int: ...


class ModelInputs(Protocol):
    """What the link needs of `edgetpud.modelfile.ModelInfo`: the input tensors' sizes."""

    @property
    def inputs(self) -> Sequence[_Spec]: ...


@dataclass(frozen=True)
class Topics:
    """Every topic of one node: `<prefix>/<node>/...`, plus the fleet topics under `<prefix>/fleet`."""

    prefix: str
    node: str
    fleet_group: str = ""

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    def results(self, model: str) -> str:
        return f"{self.base}/models/{model}/results"

    def infer(self, model: str) -> str:
        return f"{self.base}/models/{model}/infer"

    def fleet_infer(self, model: str) -> str:
        """Where clients send fleet requests; any node serving `model` in the group takes each one."""
        return f"{self.prefix}/fleet/models/{model}/infer"

    def fleet_subscription(self, model: str) -> str:
        return f"$share/{self.fleet_group}/{self.fleet_infer(model)}"

    @property
    def fleet_state(self) -> str:
        """Retained `edgetpud.fleet/1`: the models this node serves and those it has paused."""
        return f"{self.base}/fleet"

    def peer_of(self, topic: str) -> tuple[str, str] | None:
        """(node, "status" | "fleet") for another node's status or fleet-state topic, else None."""
        head = f"{self.prefix}/"  # the prefix may have several levels ("site/edgetpud")
        if not topic.startswith(head):
            return None
        node, _, leaf = topic[len(head) :].partition("/")
        if leaf not in ("status", "fleet") or node in ("", self.node):
            return None
        return node, leaf

    def model_of(self, topic: str) -> str | None:
        """The model named by an infer topic of this node or of the fleet, else None."""
        for head in (f"{self.base}/models/", f"{self.prefix}/fleet/models/"):
            if topic.startswith(head) and topic.endswith("/infer"):
                model = topic[len(head) : -len("/infer")]
                return model if model and "/" not in model else None
        return None


@dataclass(frozen=True)
class MqttStats:
    connected: bool
    backlog: int
    backlog_dropped: int
    published: int
    requests_accepted: int
    requests_rejected: dict[str, int] = field(default_factory=dict)
    connects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "backlog": self.backlog,
            "backlog_dropped": self.backlog_dropped,
            "published": self.published,
            "requests_accepted": self.requests_accepted,
            "requests_rejected": dict(self.requests_rejected),
            "connects": self.connects,
        }


@dataclass
class _Peer:
    """Another node of the fleet, as its retained status and fleet state tell."""

    online: bool = False
    group: str = ""
    models: frozenset[str] = frozenset()
    paused: frozenset[str] = frozenset()


class _Out(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: Any  # paho Properties or None


def _rc_value(rc: Any) -> int:
    value = getattr(rc, "value", rc)
    return int(value) if isinstance(value, int) else 0


def _worth_saying(attempt: int) -> bool:
    """Failed connection attempts in a row that are logged: the 1st, 10th, every 100th."""
    return attempt in (1, 10) or attempt % 100 == 0


def _rc_text(rc: Any) -> str:
    """A CONNACK code as text: paho 2 and MQTT 5 codes name themselves, 1.x ints do not."""
    if hasattr(rc, "value"):
        return str(rc)
    return str(paho.connack_string(rc))


def _props(msg: Any) -> Any:
    return getattr(msg, "properties", None)


class MqttLink:
    """One connection to the broker for the whole daemon (see the module docstring)."""

    def __init__(
        self,
        cfg: MqttConfig,
        node_id: str,
        *,
        on_request: Callable[[Request], str | None],
        on_connection: Callable[[bool], None] | None = None,
        fleet_group: str = "",
        client_id: str = "",
        max_pixels: int = payloads.DEFAULT_MAX_PIXELS,
    ) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.topics = Topics(cfg.topic_prefix, node_id, fleet_group)
        self._on_request = on_request
        self._on_connection = on_connection
        self._max_pixels = max_pixels
        self._v5 = cfg.protocol == "5"
        self._client_id = client_id or cfg.client_id or f"edgetpud-{node_id}"
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)  # the outbox shrank, or the link went down
        self._outbox: deque[_Out] = deque()
        self._unconfirmed: dict[int, _Out] = {}  # mid -> message handed to paho
        # mqtt.qos 0: no on_publish; messages handed to paho, in order, until it wrote them
        self._by_info = cfg.qos == 0
        self._unwritten: deque[tuple[Any, _Out]] = deque()
        self._direct: list[Any] = []  # infos of direct QoS 1 publishes (online, health), counted
        self._requeued = 0  # messages the last disconnect put back at the front of the outbox
        self._early: set[int] = set()  # mids confirmed before publish() returned
        self._epoch = 0  # connection breaks so far
        self._window_wait = False
        self._in_flight_max = WINDOW  # the broker's Receive Maximum can make it smaller
        self._sending = False  # a thread holds messages taken from the outbox, not yet published
        self._dropped = 0
        self._published = 0
        self._accepted = 0
        self._rejected: dict[str, int] = {}
        self._connects = 0
        self._connected = False
        self._resync_until = 0.0
        self._stopping = False
        self._stopped = False
        self._started = False
        self._models: dict[str, int | None] = {}
        self._input_desc: dict[str, str] = {}
        self._unavailable: dict[str, tuple[str, str]] = {}  # model -> (reason, message)
        self._fleet_paused: set[str] = set()
        self._peers: dict[str, _Peer] = {}
        self._health: bytes | None = None
        self._discovery: dict[str, bytes] = {}
        self._connected_at = 0.0
        self._connect_failures = 0  # attempts since the last connection; reset on CONNACK
        self._refused = False  # the last attempt ended in a CONNACK refusal, already logged
        self._probing = False  # a thread is finding out why attempts fail
        self._client = self._make_client()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt:sender", daemon=True)

    # ----------------------------------------------------------------- client set-up

    def _make_client(self) -> Any:
        cfg = self.cfg
        protocol = paho.MQTTv5 if self._v5 else paho.MQTTv311
        kw: dict[str, Any] = {
            "client_id": self._client_id,
            "protocol": protocol,
            "transport": cfg.transport,
        }
        if not self._v5:
            kw["clean_session"] = True
        client = _paho_client(**kw)
        if PAHO2:
            client.on_connect = lambda c, u, flags, rc, props=None: self._handle_connect(rc, props)
            client.on_disconnect = lambda c, u, flags, rc, props=None: self._handle_disconnect(rc)
        elif self._v5:
            client.on_connect = lambda c, u, flags, rc, props=None: self._handle_connect(rc, props)
            client.on_disconnect = lambda c, u, rc, props=None: self._handle_disconnect(rc)
        else:
            client.on_connect = lambda c, u, flags, rc: self._handle_connect(rc)
            client.on_disconnect = lambda c, u, rc: self._handle_disconnect(rc)
        if not self._by_info:  # paho 1.6: (c, u, mid); paho 2: (c, u, mid, reason, props)
            client.on_publish = lambda c, u, mid, *_: self._handle_publish(mid)
        client.on_message = lambda c, u, msg: self._handle_message(msg)
        if hasattr(client, "on_connect_fail"):
            client.on_connect_fail = lambda c, u: self._handle_connect_fail()
        # No limit in paho: the link's own WINDOW bounds what paho holds unacknowledged.
        # With a limit paho rescans every message it holds on each acknowledgement (its
        # _update_inflight): at QoS 1 with 8 simulated TPUs its thread cost 136-142 us a
        # result with 100, 309-323 with 1000, 73-78 with none (docs/benchmarks.md).
        client.max_inflight_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        _authenticate(client, cfg)
        if cfg.tls and cfg.tls_insecure:
            log.warning("mqtt.tls_insecure is set: the broker's host name is NOT verified")
        client.will_set(self.topics.status, OFFLINE, qos=1, retain=True)
        return client

    @property
    def broker(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect in the background (never blocks on the broker); reconnects with 1-30 s backoff."""
        if self._started:
            return
        self._started = True
        self._sender.start()
        keepalive = round(self.cfg.keepalive)
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=keepalive)
        self._client.loop_start()
        log.info(
            "MQTT: connecting to %s as %s (topics %s/...)",
            self.broker,
            self._client_id,
            self.topics.base,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Flush the backlog (up to `timeout`), publish retained offline, disconnect. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._connected and (self._outbox or self._in_paho()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.02 if self._by_info else 0.2))
            left_over = len(self._outbox) + self._in_paho()
            self._stopping = True
            self._cond.notify_all()
            self._room.notify_all()
        if left_over:
            log.warning(
                "MQTT: stopping with %d message(s) not delivered to %s", left_over, self.broker
            )
        if self._connected:
            info = self._client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        self._sender.join(timeout=2.0)
        if self._connects:
            log.info("MQTT: disconnected from %s", self.broker)
        else:
            log.warning("MQTT: stopped without ever connecting to %s", self.broker)

    # ----------------------------------------------------------------- what the service calls

    def set_models(
        self,
        models: Mapping[str, ModelInputs | None],
        unavailable: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """Take MQTT requests for exactly these models; others get an error reply.

        `unavailable` names configured models that cannot take MQTT requests, with the
        (reason, message) their requests are refused with; any other model is
        `unknown_model`.

        The node's `.../models/+/infer` is one wildcard subscription; fleet topics are
        subscribed per model, so this subscribes/unsubscribes the difference.
        """
        sizes: dict[str, int | None] = {}
        descs: dict[str, str] = {}
        for name, info in models.items():
            spec = info.inputs[0] if info is not None and info.inputs else None
            sizes[name] = spec.nbytes if spec is not None else None
            if spec is not None:
                shape = getattr(spec, "shape", ())
                dtype = getattr(spec, "dtype", "")
                descs[name] = "x".join(str(d) for d in shape) + (f" {dtype}" if dtype else "")
        with self._lock:
            old = set(self._models)
            self._models = sizes
            self._input_desc = descs
            self._unavailable = dict(unavailable or {})
            connected = self._connected
        if connected and self.topics.fleet_group:
            gone = sorted(old - set(sizes))
            if gone:
                self._client.unsubscribe([self.topics.fleet_subscription(m) for m in gone])
            self._subscribe(sorted(set(sizes) - old))
            self._publish_fleet_state()

    def pause_fleet(self, model: str) -> bool:
        """Stop taking fleet requests for `model` (back-pressure); its node topic stays subscribed.

        Refused (False) while no other online node of the group serves `model` unpaused:
        with every member unsubscribed the broker would discard new fleet requests
        ("no matching subscribers"), so the last one with the topic keeps taking them.
        """
        if not self.topics.fleet_group:
            return False
        with self._lock:
            if model in self._fleet_paused:
                return True
            if not self._peer_has_room(model):
                return False
            self._fleet_paused.add(model)
            connected = self._connected and model in self._models
        if connected:
            self._client.unsubscribe(self.topics.fleet_subscription(model))
            self._publish_fleet_state()
        return True

    def resume_fleet(self, model: str) -> None:
        if not self.topics.fleet_group:
            return
        with self._lock:
            if model not in self._fleet_paused:
                return
            self._fleet_paused.discard(model)
            connected = self._connected and model in self._models
        if connected:
            self._client.subscribe(self.topics.fleet_subscription(model), qos=1)
            self._publish_fleet_state()

    def fleet_paused(self, model: str) -> bool:
        """Whether this node has stopped taking fleet requests for `model`."""
        with self._lock:
            return model in self._fleet_paused

    def fleet_peers(self) -> dict[str, dict[str, Any]]:
        """The other nodes of the group as last seen: online, models served, models paused."""
        with self._lock:
            return {
                name: {"online": p.online, "models": sorted(p.models), "paused": sorted(p.paused)}
                for name, p in self._peers.items()
                if p.group == self.topics.fleet_group
            }

    def _peer_has_room(self, model: str) -> bool:
        """Another online node of our group serves `model` and takes fleet requests (lock held)."""
        group = self.topics.fleet_group
        return any(
            p.online and p.group == group and model in p.models and model not in p.paused
            for p in self._peers.values()
        )

    def _publish_fleet_state(self) -> None:
        with self._lock:
            body = {
                "schema": "edgetpud.fleet/1",
                "node": self.node_id,
                "group": self.topics.fleet_group,
                "models": sorted(self._models),
                "paused": sorted(self._fleet_paused),
                "time": time.time(),
            }
            connected = self._connected
        if connected:
            data = payloads.to_json(body)
            self._client.publish(self.topics.fleet_state, data, qos=1, retain=True)

    def _take_peer(self, node: str, leaf: str, payload: bytes) -> None:
        """Another node's status or fleet state changed; a paused model with no one else to
        take its requests resumes at once (e.g. the other node died or paused too)."""
        with self._lock:
            peer = self._peers.setdefault(node, _Peer())
            if leaf == "status":
                peer.online = payload == ONLINE
            else:
                try:
                    body = json.loads(payload) if payload else {}
                except ValueError:
                    body = {}
                body = body if isinstance(body, dict) else {}
                peer.group = str(body.get("group", ""))
                peer.models = frozenset(map(str, body.get("models") or ()))
                peer.paused = frozenset(map(str, body.get("paused") or ()))
            stranded = sorted(m for m in self._fleet_paused if not self._peer_has_room(m))
        for model in stranded:
            log.info(
                "model %s: no other node of fleet group %s takes its requests now; "
                "taking fleet requests again",
                model,
                self.topics.fleet_group,
            )
            self.resume_fleet(model)

    def publish_result(self, result: Result) -> None:
        """Queue one result: to the request's reply topic, else the results topic.

        Never blocks while the broker is unreachable (the backlog keeps them). While it is
        connected but takes results more slowly than they come (WINDOW waiting on top of
        WINDOW unacknowledged), the caller, a worker's thread, waits up to ROOM_WAIT_S for
        room: that slows the workers down to the broker's pace instead of dropping
        results that could be delivered."""
        data = payloads.to_json(payloads.result_payload(result, self.node_id))
        self._reply(result.request.model, result.request.reply_to, data, wait=True)

    def publish_event(self, event: Mapping[str, Any]) -> None:
        """Queue one event for `.../events` (schema edgetpud.event/1 added if absent)."""
        data = payloads.to_json(payloads.event_payload(event, self.node_id))
        self._enqueue(_Out(self.topics.events, data, self.cfg.qos, False, None))

    def publish_health(self, snapshot: Mapping[str, Any]) -> None:
        """Publish the retained health snapshot (QoS 1); kept and sent on reconnect if offline."""
        body = dict(snapshot)
        body.setdefault("schema", payloads.HEALTH_SCHEMA)
        body.setdefault("node", self.node_id)
        body.setdefault("time", time.time())
        body.setdefault("mqtt", self.stats().as_dict())
        data = payloads.to_json(body)
        discovery = _discovery_configs(self, body) if self.cfg.homeassistant else {}
        with self._lock:
            self._health = data
            changed = {t: p for t, p in discovery.items() if self._discovery.get(t) != p}
            self._discovery.update(changed)
            connected = self._connected
        if connected:
            for topic, config in changed.items():
                self._direct_publish(topic, config)
            self._direct_publish(self.topics.health, data)

    def stats(self) -> MqttStats:
        with self._lock:
            return MqttStats(
                connected=self._connected,
                backlog=len(self._outbox) + self._in_paho(),
                backlog_dropped=self._dropped,
                published=self._published,
                requests_accepted=self._accepted,
                requests_rejected=dict(self._rejected),
                connects=self._connects,
            )

    # ----------------------------------------------------------------- outbox

    def _reply(
        self, model: str, reply_to: ReplyTo | None, data: bytes, *, wait: bool = False
    ) -> None:
        if reply_to is not None and reply_to.topic:
            props = None
            if self._v5:
                props = _ReplyProperties("application/json", reply_to.correlation)
            self._enqueue(_Out(reply_to.topic, data, self.cfg.qos, False, props), wait)
        else:
            self._enqueue(_Out(self.topics.results(model), data, self.cfg.qos, False, None), wait)

    def _enqueue(self, out: _Out, wait: bool = False) -> None:
        with self._lock:
            if wait and self._connected and len(self._outbox) >= WINDOW:
                deadline = time.monotonic() + ROOM_WAIT_S
                while self._connected and not self._stopping and len(self._outbox) >= WINDOW:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._room.wait(left)
            # the limit is for outages; while connected a short queue always passes
            cap = (
                self.cfg.backlog_limit
                if not self._connected
                else max(self.cfg.backlog_limit, WINDOW)
            )
            if len(self._outbox) >= cap:
                if cap == 0:
                    self._dropped += 1
                    return
                self._outbox.popleft()
                self._requeued = max(0, self._requeued - 1)
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 1000 == 0:
                    if self._connected:
                        log.warning(
                            "MQTT: %s takes messages more slowly than they come and the "
                            "backlog is full (%d): %d oldest message(s) dropped so far; "
                            "check the broker's load, or lower the sources' rates",
                            self.broker,
                            cap,
                            self._dropped,
                        )
                    else:
                        log.warning(
                            "MQTT: backlog full (mqtt.backlog_limit=%d) while %s is "
                            "unreachable: %d oldest message(s) dropped so far",
                            self.cfg.backlog_limit,
                            self.broker,
                            self._dropped,
                        )
            direct = not self._outbox and self._may_send()
            if direct:
                # Nothing is waiting and nobody is sending: publish from this thread (a
                # worker's) instead of waking the sender; order is kept by `_sending`.
                self._sending = True
                epoch = self._epoch
            else:
                self._outbox.append(out)
                if len(self._outbox) == 1:
                    self._cond.notify()
        if direct:
            self._publish_batch([out], epoch)

    def _may_send(self) -> bool:
        """Whether messages may go to paho now (lock held)."""
        return (
            self._connected
            and not self._sending
            and self._in_paho() < self._in_flight_max
            and not (self._unconfirmed and time.monotonic() < self._resync_until)
        )

    def _in_paho(self) -> int:
        """Messages handed to paho and not yet written (QoS 0) or acknowledged (lock held)."""
        if self._by_info:
            unwritten = self._unwritten
            while unwritten and _written(unwritten[0][0]):
                unwritten.popleft()
                self._published += 1
            if self._direct:
                waiting = [info for info in self._direct if not _written(info)]
                self._published += len(self._direct) - len(waiting)
                self._direct = waiting
            return len(unwritten)
        return len(self._unconfirmed)

    def _direct_publish(self, topic: str, payload: bytes) -> None:
        """A retained QoS 1 message straight to paho (not through the outbox)."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        if self._by_info:
            with self._lock:
                self._direct.append(info)
                if len(self._direct) > WINDOW:
                    del self._direct[: -WINDOW // 2]  # a long outage: count what is recent

    def _send_loop(self) -> None:
        """Hand the outbox to paho in order, in batches, at most WINDOW unconfirmed at a time."""
        while True:
            with self._cond:
                while not self._stopping and not (self._outbox and self._may_send()):
                    self._window_wait = True
                    # waiting for window room with no on_publish to say paho wrote: poll
                    self._cond.wait(0.005 if self._outbox and self._unwritten else 0.5)
                self._window_wait = False
                if self._stopping:
                    return
                self._resync_until = 0.0
                epoch = self._epoch
                n = min(len(self._outbox), self._in_flight_max - self._in_paho(), BATCH)
                batch = [self._outbox.popleft() for _ in range(n)]
                self._sending = True
                self._room.notify_all()
            self._publish_batch(batch, epoch)

    def _publish_batch(self, batch: list[_Out], epoch: int) -> None:
        """Hand `batch` (taken from the outbox with `_sending` set) to paho, then record it."""
        client = self._client
        try:
            sent: list[tuple[Any, _Out]] = []
            unsent: list[_Out] = []
            for i, out in enumerate(batch):
                try:
                    info = client.publish(
                        out.topic, out.payload, qos=out.qos, retain=out.retain, properties=out.props
                    )
                except Exception:
                    log.exception("MQTT: could not publish to %s; message dropped", out.topic)
                    continue
                if info.rc == paho.MQTT_ERR_NO_CONN and out.qos == 0:
                    unsent = batch[i:]  # not sent: keep these first in line
                    break
                sent.append((info, out))
            with self._cond:
                broken = self._epoch != epoch
                again: list[_Out] = []  # handed to paho, not written when the link broke
                for info, out in sent:
                    if self._by_info:
                        if broken and not _written(info):
                            again.append(out)
                        else:
                            self._unwritten.append((info, out))
                        continue
                    mid = info.mid
                    # acknowledged already: its on_publish came first (`_early`), or came
                    # and was wiped from `_early` by a disconnect in between
                    if mid in self._early or _acknowledged(info):
                        self._early.discard(mid)
                    elif broken and out.qos == 0:
                        again.append(out)  # the link broke meanwhile: send again rather than lose
                    else:
                        self._unconfirmed[mid] = out
                # back in line behind what the disconnect put back (older than this batch)
                # and ahead of the rest of the outbox (newer)
                older = min(self._requeued, len(self._outbox)) if broken else 0
                self._outbox.rotate(-older)
                self._outbox.extendleft(reversed(again + unsent))
                self._outbox.rotate(older)
                if len(self._early) > 4 * WINDOW:
                    self._early.clear()  # confirmations of direct publishes (health, status)
        finally:
            with self._cond:
                self._sending = False
                if self._outbox:
                    self._cond.notify()

    # ----------------------------------------------------------------- paho callbacks (network thread)

    def _handle_connect(self, rc: Any, props: Any = None) -> None:
        code = _rc_value(rc)
        if code != 0:
            self._log_refusal(code, rc)
            return
        # MQTT 5: no more QoS 1/2 messages unacknowledged than the broker's Receive Maximum
        # (absent: 65535); a few are kept for "online", health and discovery
        receive_max = getattr(props, "ReceiveMaximum", None) if self.cfg.qos > 0 else None
        in_flight = min(WINDOW, max(1, receive_max - DIRECT_RESERVE)) if receive_max else WINDOW
        if in_flight != self._in_flight_max:
            log.debug(
                "MQTT: at most %d results unacknowledged (broker: %s)", in_flight, receive_max
            )
        client = self._client
        _no_delay(client)
        # Requests first: the broker handles one connection's packets in order, so a
        # client that sends a request as soon as it sees "online" finds it subscribed.
        client.subscribe(self.topics.infer("+"), qos=1)
        # "online" next, before anyone can see us connected and publish "offline" in stop()
        self._direct_publish(self.topics.status, ONLINE)
        with self._lock:
            self._in_flight_max = in_flight
            self._connected = True
            self._connected_at = time.monotonic()
            self._connects += 1
            self._connect_failures = 0
            models = sorted(self._models)
            health = self._health
            discovery = dict(self._discovery)
            if self._unconfirmed:
                self._resync_until = time.monotonic() + RESEND_WAIT
        log.info("MQTT: connected to %s", self.broker)
        self._subscribe(models)
        if self.topics.fleet_group:
            prefix = self.topics.prefix
            self._client.subscribe([(f"{prefix}/+/status", 1), (f"{prefix}/+/fleet", 1)])
            self._publish_fleet_state()
        for topic, config in discovery.items():
            self._direct_publish(topic, config)
        if health is not None:
            self._direct_publish(self.topics.health, health)
        with self._cond:
            self._cond.notify_all()
        self._notify_connection(True)

    def _log_refusal(self, code: int, rc: Any) -> None:
        """The broker answered CONNACK with a refusal: logged on the 1st, 10th and every
        100th attempt in a row (with 30 s backoff, not twice a minute for ever)."""
        self._connect_failures += 1
        self._refused = True
        attempt = self._connect_failures
        level = logging.ERROR if _worth_saying(attempt) else logging.DEBUG
        if code in AUTH_REFUSED:
            who = f"user {self.cfg.username!r}" if self.cfg.username else "an anonymous client"
            log.log(
                level,
                "MQTT: broker %s refused %s (attempt %d): %s; check mqtt.username and the "
                "password in %s (and the broker's ACL); retrying with backoff up to 30 s",
                self.broker,
                who,
                attempt,
                _rc_text(rc),
                self.cfg.password_file or "mqtt.password_file",
            )
        else:
            log.log(
                level,
                "MQTT: broker %s refused the connection (attempt %d): %s; retrying with "
                "backoff up to 30 s",
                self.broker,
                attempt,
                _rc_text(rc),
            )

    def _handle_connect_fail(self) -> None:
        """paho could not open the connection (TCP or the TLS handshake); it says no more."""
        self._attempt_failed(dropped=False)

    def _attempt_failed(self, *, dropped: bool) -> None:
        """One failed connection attempt: the 1st, 10th and every 100th are explained.

        `dropped`: the connection opened, then closed before the broker's CONNACK (a TLS
        listener spoken to in plain MQTT, a client certificate the broker wants).
        The cause is found by `broker_probe` in a thread of its own, so paho's loop
        keeps retrying meanwhile.
        """
        self._connect_failures += 1
        attempt = self._connect_failures
        if not _worth_saying(attempt):
            log.debug("MQTT: connection attempt %d to %s failed", attempt, self.broker)
            return
        with self._lock:
            if self._probing or self._stopping:
                return
            self._probing = True
        threading.Thread(
            target=self._explain_failure, args=(attempt, dropped), name="mqtt:probe", daemon=True
        ).start()

    def _explain_failure(self, attempt: int, dropped: bool) -> None:
        try:
            cause = broker_probe.probe(self.cfg)
        except Exception:  # the probe only explains; never let it break the link
            log.exception("MQTT: could not find out why %s refuses connections", self.broker)
            cause = None
        finally:
            with self._lock:
                self._probing = False
        if cause is None and dropped:
            cause = (
                "the broker accepted the network connection and then closed it before "
                "accepting the client; its log says why (a client id already in use, a "
                "connection limit, an MQTT version it does not take)"
            )
        elif cause is None:
            cause = (
                "it answered a test connection just now, so it may have been restarting; "
                f"if this repeats, check mqtt.host/mqtt.port{' and the TLS settings' if self.cfg.tls else ''}"
            )
        log.warning(
            "MQTT: cannot connect to %s (attempt %d): %s; retrying with backoff up to 30 s",
            self.broker,
            attempt,
            cause,
        )

    def _handle_disconnect(self, rc: Any) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            # QoS 0 messages paho has not written are gone from paho: put them back in front.
            lost = [mid for mid, out in self._unconfirmed.items() if out.qos == 0]
            for mid in reversed(lost):
                self._outbox.appendleft(self._unconfirmed.pop(mid))
            self._in_paho()  # count what was written
            self._outbox.extendleft(reversed([out for _, out in self._unwritten]))
            self._requeued = len(lost) + len(self._unwritten)
            self._unwritten.clear()
            # _direct stays: paho resends unacknowledged QoS 1 messages (an "online" the
            # broker died before acknowledging) after reconnecting; counted once acknowledged
            self._early.clear()
            self._epoch += 1
            self._cond.notify_all()
            self._room.notify_all()
        if was and not self._stopping:
            log.warning(
                "MQTT: lost connection to %s (%s); keeping up to %d results until it is back",
                self.broker,
                self._disconnect_text(rc),
                self.cfg.backlog_limit,
            )
        if was:
            self._notify_connection(False)
        elif self._refused:
            self._refused = False  # the refusal said why
        elif not self._stopping:
            self._attempt_failed(dropped=True)

    def _disconnect_text(self, rc: Any) -> str:
        """Why the link broke, in words: paho 1.6 gives bare numbers, paho 2 "Unspecified error"."""
        code = _rc_value(rc)
        if code == 0:
            return "closed by the broker"
        if code == 142:  # MQTT 5 "Session taken over"
            return (
                f"another client connected with this daemon's client id {self._client_id!r} and "
                "took the session over; give each daemon its own daemon.node_id or mqtt.client_id"
            )
        if code == 128 or (not hasattr(rc, "value") and code == paho.MQTT_ERR_CONN_LOST):
            text = "the connection broke: the broker stopped or restarted, or the network failed"
            if time.monotonic() - self._connected_at < QUICK_LOSS_S:
                text += (
                    f"; if this repeats soon after every reconnect, another client may be "
                    f"using this daemon's client id {self._client_id!r}: give each daemon its "
                    "own daemon.node_id or mqtt.client_id"
                )
            return text
        if hasattr(rc, "value"):
            return str(rc)
        return str(paho.error_string(code))

    def _handle_publish(self, mid: int) -> None:
        """paho wrote a QoS 0 message or the broker acknowledged a QoS 1/2 one (not with qos 0)."""
        with self._cond:
            self._published += 1
            if self._unconfirmed.pop(mid, None) is None:
                self._early.add(mid)  # not recorded yet, or a direct publish (online, health)
            if self._window_wait and self._outbox:  # the sender waits for window room
                self._cond.notify_all()

    def _notify_connection(self, up: bool) -> None:
        if self._on_connection is None:
            return
        try:
            self._on_connection(up)
        except Exception:
            log.exception("MQTT: the on_connection callback failed")

    def _subscribe(self, models: Sequence[str]) -> None:
        """Fleet subscriptions, one per model (the node's own infer topic is one wildcard)."""
        if not self.topics.fleet_group:
            return
        with self._lock:
            paused = set(self._fleet_paused)
        topics = [(self.topics.fleet_subscription(m), 1) for m in models if m not in paused]
        if topics:
            self._client.subscribe(topics)

    # ----------------------------------------------------------------- requests in

    def _handle_message(self, msg: Any) -> None:
        try:
            peer = self.topics.peer_of(msg.topic) if self.topics.fleet_group else None
            if peer is not None:
                self._take_peer(peer[0], peer[1], bytes(msg.payload))
                return
            self._take_request(msg)
        except Exception:
            log.exception("MQTT: request on %s could not be handled", getattr(msg, "topic", "?"))

    def _take_request(self, msg: Any) -> None:
        topic: str = msg.topic
        model = self.topics.model_of(topic)
        if model is None:
            log.debug("MQTT: ignoring message on %s", topic)
            return
        props = _props(msg)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        content_type = getattr(props, "ContentType", None) if props is not None else None
        request_id = _request_id(correlation, getattr(props, "UserProperty", None))
        reply_to = ReplyTo(response_topic, correlation) if response_topic else None
        fleet = not topic.startswith(self.topics.base + "/")
        with self._lock:
            known = model in self._models
            nbytes = self._models.get(model)
            desc = self._input_desc.get(model, "")
            unavailable = self._unavailable.get(model)
        payload = bytes(msg.payload)
        try:
            if not known and unavailable is not None:
                raise payloads.BadRequest(*unavailable)
            if not known:
                raise payloads.BadRequest(
                    payloads.UNKNOWN_MODEL,
                    f"model {model!r} is not served by {self.node_id}; see the health topic "
                    f"{self.topics.health} for the models it runs",
                )
            decoded = payloads.decode_request(
                model,
                payload,
                input_nbytes=nbytes,
                input_desc=desc,
                content_type=content_type,
                max_bytes=self.cfg.max_request_bytes,
                max_pixels=self._max_pixels,
            )
        except payloads.BadRequest as exc:
            self._refuse(model, reply_to, request_id, exc.reason, str(exc))
            return
        meta: dict[str, Any] = {"topic": topic}
        if decoded.kind == "image":
            meta.update(format=decoded.format, width=decoded.width, height=decoded.height)
        request = Request(
            model=model,
            payload=decoded.payload,
            kind=decoded.kind,
            id=request_id,
            source="mqtt-fleet" if fleet else "mqtt",
            reply_to=reply_to,
            meta=meta,
        )
        try:
            answer = self._on_request(request)
        except Exception as exc:
            log.exception("MQTT: the service failed to take request %s for %s", request_id, model)
            answer = f"internal: the daemon could not queue the request ({exc}); see its log"
        if answer:
            reason, message = payloads.split_reason(answer)
            self._refuse(model, reply_to, request_id, reason, message)
            return
        with self._lock:
            self._accepted += 1

    def _refuse(
        self, model: str, reply_to: ReplyTo | None, request_id: str, reason: str, text: str
    ) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
        log.info("MQTT: refused request %s for model %s: %s", request_id, model, text)
        body = payloads.error_payload(model, reason, text, node=self.node_id, request_id=request_id)
        self._reply(model, reply_to, payloads.to_json(body))


def _request_id(correlation: Any, user_props: Any) -> str:
    if isinstance(correlation, (bytes, bytearray)) and correlation:
        try:
            text = bytes(correlation).decode()
            if text.isprintable():
                return text
        except UnicodeDecodeError:
            pass
        return bytes(correlation).hex()
    for key, value in user_props or ():
        if key == "request_id" and value:
            return str(value)
    return new_request_id()


# --------------------------------------------------------------------- reading retained topics


def _written(info: Any) -> bool:
    """Whether paho wrote this message (QoS 0) or the broker acknowledged it (QoS 1/2)."""
    try:
        return bool(info.is_published())
    except (RuntimeError, ValueError):  # paho refused it: it will never be written
        return True


def _acknowledged(info: Any) -> bool:
    """Whether the broker acknowledged a QoS 1/2 message paho took while connected.

    paho sets this after its on_publish callback. A message taken while the link was
    down (rc NO_CONN) is resent after the reconnect; its on_publish says when it is
    acknowledged."""
    return bool(info.rc == paho.MQTT_ERR_SUCCESS and info.is_published())


def _no_delay(client: Any) -> None:
    """Turn off Nagle's algorithm on the broker connection.

    paho leaves it on, so a small reply can wait for the broker's delayed ACK
    (tens of milliseconds); a request/reply service wants each message out at once.
    """
    sock = client.socket()
    with contextlib.suppress(AttributeError, OSError):  # not TCP (e.g. a websocket wrapper)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _authenticate(client: Any, cfg: MqttConfig) -> None:
    """User name, password (from its file) and TLS settings from the config, on a paho client.

    Raises ConfigUnreadableError, saying which files to check, when they cannot be used.
    """
    try:
        if cfg.username:
            # the first line is the password (docs/mqtt.md); a trailing comment line is not
            password = _first_line(cfg.password_file) if cfg.password_file else None
            client.username_pw_set(cfg.username, password)
        if cfg.tls:
            client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
            )
            if cfg.tls_insecure:
                client.tls_insecure_set(True)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        files = ", ".join(
            f"mqtt.{key} = {path}"
            for key, path in (
                ("password_file", cfg.password_file if cfg.username else None),
                ("ca_file", cfg.ca_file if cfg.tls else None),
                ("cert_file", cfg.cert_file if cfg.tls else None),
                ("key_file", cfg.key_file if cfg.tls else None),
            )
            if path is not None
        )
        raise ConfigUnreadableError(
            f"cannot use the MQTT credentials ({exc}); check {files or 'the [mqtt] files'}: "
            "readable by the service's user, the password file UTF-8 with the password on its "
            "first line, certificates and key in PEM form (edgetpud check-config checks them)"
        ) from None


def _first_line(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0] if lines else ""


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
        state["rc"] = _rc_value(rc)
        refusal.append(_rc_text(rc))
        if state["rc"] == 0:
            client.subscribe(topic_filter, qos=1)
        else:
            done.set()

    def subscribed() -> None:
        state["subscribed"] = state["last"] = time.monotonic()

    def message(msg: Any) -> None:
        if msg.retain:
            with lock:
                got[msg.topic] = bytes(msg.payload)
                state["last"] = time.monotonic()

    kw: dict[str, Any] = {
        "client_id": f"edgetpud-status-{new_request_id()}",
        "protocol": paho.MQTTv5 if cfg.protocol == "5" else paho.MQTTv311,
        "transport": cfg.transport,
    }
    client = _paho_client(**kw)
    client.on_connect = lambda c, u, flags, rc, props=None: connected(rc)
    if PAHO2 or cfg.protocol == "5":
        client.on_subscribe = lambda c, u, mid, rcs, props=None: subscribed()
    else:
        client.on_subscribe = lambda c, u, mid, qos: subscribed()
    client.on_message = lambda c, u, msg: message(msg)
    _authenticate(client, cfg)
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
        code = int(state["rc"])
        hint = (
            "check mqtt.username, the password in mqtt.password_file and the broker's ACL"
            if code in AUTH_REFUSED
            else "see the broker's log for why"
        )
        raise ConnectionError(
            f"the MQTT broker {cfg.host}:{cfg.port} refused the connection "
            f"({refusal[-1] + ', ' if refusal else ''}code {code}); {hint}"
        )
    if not state["subscribed"]:
        cause = (
            broker_probe.probe(cfg) or "check that it runs and that mqtt.host/port/tls are right"
        )
        raise ConnectionError(
            f"no answer from the MQTT broker {cfg.host}:{cfg.port} within {timeout:.0f} s: {cause}"
        )
    return got


# --------------------------------------------------------------------- Home Assistant discovery

_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def _slug(text: str) -> str:
    return _SLUG.sub("_", text).strip("_") or "x"


def _entries(section: Any, key: str) -> list[tuple[str, str]]:
    """(name, Jinja expression selecting it) for a health section that is a list or a mapping."""
    if isinstance(section, Mapping):
        return [(str(n), f"value_json.{key}[{str(n)!r}]") for n in section]
    out: list[tuple[str, str]] = []
    if isinstance(section, list):
        ident = "identity" if key == "devices" else "name"
        for item in section:
            if isinstance(item, Mapping) and item.get(ident):
                name = str(item[ident])
                expr = f"(value_json.{key} | selectattr({ident!r}, 'eq', {name!r}) | first)"
                out.append((name, expr))
    return out


def _discovery_configs(link: MqttLink, health: Mapping[str, Any]) -> dict[str, bytes]:
    """Retained Home Assistant discovery configs for this node's devices, models and availability."""
    t = link.topics
    prefix = link.cfg.homeassistant_prefix
    node = _slug(link.node_id)
    device = {
        "identifiers": [f"edgetpud_{node}"],
        "name": f"edgetpud {link.node_id}",
        "manufacturer": "edgetpud",
        "model": "Coral Edge TPU service",
        "sw_version": __version__,
    }
    common = {
        "availability_topic": t.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }
    configs: dict[str, dict[str, Any]] = {}

    def sensor(component: str, object_id: str, name: str, **extra: Any) -> None:
        uid = f"edgetpud_{node}_{object_id}"
        configs[f"{prefix}/{component}/{node}/{object_id}/config"] = {
            "name": name,
            "unique_id": uid,
            "object_id": uid,
            **common,
            **extra,
        }

    sensor(
        "binary_sensor",
        "daemon",
        "edgetpud daemon",
        state_topic=t.status,
        payload_on="online",
        payload_off="offline",
        device_class="connectivity",
    )
    for ident, expr in _entries(health.get("devices"), "devices"):
        obj = _slug(ident)
        sensor(
            "sensor",
            f"{obj}_state",
            f"Edge TPU {ident} state",
            state_topic=t.health,
            value_template=f"{{{{ {expr}.state }}}}",
            icon="mdi:chip",
        )
        sensor(
            "sensor",
            f"{obj}_temperature",
            f"Edge TPU {ident} temperature",
            state_topic=t.health,
            value_template=f"{{{{ {expr}.temperature }}}}",
            device_class="temperature",
            unit_of_measurement="°C",
            state_class="measurement",
        )
    for name, expr in _entries(health.get("models"), "models"):
        obj = f"model_{_slug(name)}"
        sensor(
            "sensor",
            f"{obj}_rate",
            f"Model {name} rate",
            state_topic=t.health,
            value_template=f"{{{{ {expr}.rate }}}}",
            unit_of_measurement="inferences/s",
            state_class="measurement",
            icon="mdi:speedometer",
        )
        sensor(
            "sensor",
            f"{obj}_latency_p50",
            f"Model {name} latency p50",
            state_topic=t.health,
            value_template=f"{{{{ {expr}.p50_ms }}}}",
            unit_of_measurement="ms",
            device_class="duration",
            state_class="measurement",
        )
    return {topic: payloads.to_json(body) for topic, body in configs.items()}
