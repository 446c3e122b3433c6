"""The connection to the broker: the only module that imports paho.

Works with paho-mqtt 1.6 (Debian 12) and 2.x (PyPI), MQTT 3.1.1 and 5, TCP,
websockets and TLS (`CallbackAPIVersion` is feature-detected).

`Window` drains an `Outbox` the application owns: a sender thread (or the
publishing thread itself when nothing waits) hands messages to paho in order, at
most WINDOW unconfirmed at a time (fewer if the broker's MQTT 5 Receive Maximum
says so). Messages paho held when the link broke (QoS 1/2) are resent by paho
first; the window waits for them before it sends anything newer, so order holds
across an outage. QoS 0 messages paho had not written go back to the front of the
outbox. `Transport` owns the paho client: connect, reconnect, why attempts fail,
the retained `online`/`offline`. Incoming messages are handed on as `Incoming`
records on paho's thread; the handler only decodes and enqueues.

With `mqtt.qos = 0` every outbox message is QoS 0 and the window needs no callback
per message: it asks each message's MQTTMessageInfo whether paho wrote it. paho 2
builds a ReasonCode and a Properties object for every on_publish call, which was a
fifth of the CPU a QoS 0 result cost (bench/bench_mqtt.py cpu).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from edgetpud import broker_probe
from edgetpud.config import MqttConfig
from edgetpud.errors import ConfigUnreadableError
from edgetpud.mqtt.outbox import Out, Outbox
from edgetpud.mqtt.topics import OFFLINE, ONLINE, Incoming, Topics

try:
    from paho.mqtt.enums import CallbackAPIVersion

    PAHO2 = True
except ImportError:  # paho-mqtt 1.x
    PAHO2 = False

log = logging.getLogger(__name__)

WINDOW = 1000  # messages handed to paho but not yet confirmed written/acknowledged
DIRECT_RESERVE = 4  # of a broker's Receive Maximum, kept for online/health/discovery
BATCH = 256  # messages handed to paho per turn of the sender
QUICK_LOSS_S = 10.0  # a connection lost this soon after it was made may be a client id clash
ROOM_WAIT_S = 1.0  # how long a result waits for room while connected and the outbox is full
READ_BURST = 1000  # more loop_read() calls per turn of paho's loop, while data is waiting
READ_CHUNK = 65536  # bytes read from the broker's socket at once (plain TCP)
RESEND_WAIT = 10.0  # after reconnect, how long to wait for paho's resends before moving on
AUTH_REFUSED = {4, 5, 134, 135}  # 3.1.1 and MQTT 5 codes for bad credentials / not authorised


class _Client(paho.Client):
    """paho's client, reading every packet already in the socket before it writes, and
    writing a publish from the thread that publishes it.

    paho reads one packet per turn of its loop when it holds no message of its own (an
    idle daemon), then writes that request's PUBACK. When the broker has died, the write
    fails and paho drops the connection with whatever is still unread: requests the broker
    delivered, and acknowledged to their senders, before it died. paho took 2 of 50 such
    requests (tests/integration/test_mqtt_link.py); this takes all of them.

    paho's `publish()` from another thread only queues the packet and wakes paho's thread
    (a byte through a socket pair), which wakes, selects and writes it: per result a
    thread switch and four system calls in the daemon; paho's own thread queues a
    request's PUBACK the same way and turns its loop once more to write it. With
    `direct_writes` (set while connected over plain TCP) the thread that queues a packet
    writes the queue itself when no other thread is writing; whatever it cannot write
    (the socket full, another writer busy) is left to paho's thread as before. One lock (`_writing`) serialises every write of
    the queue, in either thread, and the closing of the socket, so packets leave in the
    order they were queued and no thread writes to a socket being closed. Not over TLS
    (one OpenSSL connection must not be written and read by two threads at once) nor
    websockets (paho's framing state is not shared).

    paho reads a packet's fixed header one byte at a time, a system call each (a
    49 KB request took 9-10 recv calls). Over plain TCP this reads up to READ_CHUNK
    bytes at once and hands paho what it asks for from them (`_sock_recv`); what is
    read is always consumed in the same turn of paho's loop, so select() never sleeps
    over a packet already in this buffer.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._writing = threading.RLock()
        self.direct_writes = False  # Transport sets it once connected over plain TCP
        # bytes read from `_rsock` that paho has not taken yet: _rbuf[_rpos:]
        self._rbuf = b""
        self._rpos = 0
        self._rsock: Any = None

    def _packet_write(self) -> Any:
        with self._writing:
            return super()._packet_write()

    def _sock_close(self) -> None:
        with self._writing:
            self.direct_writes = False  # until the next connection is up
            super()._sock_close()

    def _packet_queue(self, command: int, packet: Any, mid: int, qos: int, info: Any = None) -> Any:
        kind = command & 0xF0
        if kind == paho.DISCONNECT:
            with self._writing:  # nobody writes directly from here on: paho's thread ends it
                self.direct_writes = False
                return super()._packet_queue(command, packet, mid, qos, info)
        if kind == paho.CONNECT or not self.direct_writes:
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append(
            {"command": command, "mid": mid, "qos": qos, "pos": 0,
             "to_process": len(packet), "packet": packet, "info": info}
        )  # fmt: skip
        if self._writing.acquire(blocking=False):
            try:
                if self.direct_writes and self._sock is not None:
                    super()._packet_write()  # what it cannot write stays queued, in order
            finally:
                self._writing.release()
        if self._out_packet:  # left for paho's thread: wake it as paho's own queue does
            wake = self._sockpairW
            if wake is not None:
                with contextlib.suppress(BlockingIOError, OSError):
                    wake.send(b"0")
        return paho.MQTT_ERR_SUCCESS

    def loop_read(self, max_packets: int = 1) -> Any:
        rc = super().loop_read(max_packets)
        burst = 0
        while not rc and (self._buffered() or (burst < READ_BURST and self._unread())):
            burst += 1
            rc = super().loop_read(max_packets)
        return rc

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if type(sock) is not socket.socket:  # TLS (OpenSSL buffers), websockets: as paho reads
            return bytes(super()._sock_recv(bufsize))
        if self._rsock is not sock or self._rpos >= len(self._rbuf):
            data = bytes(super()._sock_recv(max(bufsize, READ_CHUNK)))
            if len(data) <= bufsize:
                self._rbuf, self._rpos, self._rsock = b"", 0, None
                return data
            self._rbuf, self._rpos, self._rsock = data, 0, sock
        pos = self._rpos
        chunk = self._rbuf[pos : pos + bufsize]
        self._rpos = pos + len(chunk)
        return chunk

    def _buffered(self) -> bool:
        """Whether bytes read from the current socket wait in this client for paho."""
        return self._rsock is self._sock and self._rpos < len(self._rbuf)

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


def reply_properties(content_type: str, correlation: bytes | None) -> Any:
    """The MQTT 5 properties of a reply, for an `Out` (see _ReplyProperties)."""
    return _ReplyProperties(content_type, correlation)


def paho_client(**kw: Any) -> Any:
    """A paho client with the version 2 callback API on paho 2, or a TLS-safe 1.6 one."""
    return _Client(CallbackAPIVersion.VERSION2, **kw) if PAHO2 else _Paho16Client(**kw)


def protocol_of(cfg: MqttConfig) -> int:
    return int(paho.MQTTv5 if cfg.protocol == "5" else paho.MQTTv311)


def rc_value(rc: Any) -> int:
    value = getattr(rc, "value", rc)
    return int(value) if isinstance(value, int) else 0


def rc_text(rc: Any) -> str:
    """A CONNACK code as text: paho 2 and MQTT 5 codes name themselves, 1.x ints do not."""
    if hasattr(rc, "value"):
        return str(rc)
    return str(paho.connack_string(rc))


def incoming(msg: Any) -> Incoming:
    """paho's message as a plain record (MQTT 5 properties read once, here)."""
    props = getattr(msg, "properties", None)
    if props is None:
        return Incoming(msg.topic, bytes(msg.payload), retain=bool(msg.retain))
    return Incoming(
        msg.topic,
        bytes(msg.payload),
        getattr(props, "ResponseTopic", None),
        getattr(props, "CorrelationData", None),
        getattr(props, "ContentType", None),
        getattr(props, "UserProperty", None),
        bool(msg.retain),
    )


def _worth_saying(attempt: int) -> bool:
    """Failed connection attempts in a row that are logged: the 1st, 10th, every 100th."""
    return attempt in (1, 10) or attempt % 100 == 0


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


def authenticate(client: Any, cfg: MqttConfig) -> None:
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


def simple_client(
    cfg: MqttConfig,
    client_id: str,
    *,
    on_connect: Callable[[Any], None],
    on_subscribe: Callable[[], None],
    on_message: Callable[[Incoming], None],
) -> Any:
    """A short-lived client (edgetpud status): callbacks take (rc), (), (message)."""
    client = paho_client(client_id=client_id, protocol=protocol_of(cfg), transport=cfg.transport)
    client.on_connect = lambda c, u, flags, rc, props=None: on_connect(rc)
    if PAHO2 or cfg.protocol == "5":
        client.on_subscribe = lambda c, u, mid, rcs, props=None: on_subscribe()
    else:
        client.on_subscribe = lambda c, u, mid, qos: on_subscribe()
    client.on_message = lambda c, u, msg: on_message(incoming(msg))
    authenticate(client, cfg)
    return client


class Window:
    """Hands the outbox to paho in order, in batches, at most WINDOW unconfirmed at a time.

    Every field is guarded by the outbox's lock (shared with the outbox, so that a
    worker's publish, the sender thread and paho's callbacks see one state).
    """

    def __init__(
        self,
        outbox: Outbox,
        client: Any,
        cfg: MqttConfig,
        broker: str,
        denials: Denials | None = None,
    ) -> None:
        self.ob = outbox
        self.denials = denials or Denials(broker, lambda t: "other")
        self.direct_topics: dict[int, str] = {}  # mid -> topic of a direct QoS 1 publish
        self.early_denied: dict[int, int] = {}  # mid -> reason code, denied before recorded
        self.client = client
        self.cfg = cfg
        self.broker = broker
        # mqtt.qos 0: no on_publish; messages handed to paho, in order, until it wrote them
        self.by_info = cfg.qos == 0
        self.unconfirmed: dict[int, Out] = {}  # mid -> message handed to paho
        self.unwritten: deque[tuple[Any, Out]] = deque()
        self.direct: list[Any] = []  # infos of direct QoS 1 publishes (online, health), counted
        self.early: set[int] = set()  # mids confirmed before publish() returned
        self.epoch = 0  # connection breaks so far
        self.window_wait = False
        self.in_flight_max = WINDOW  # the broker's Receive Maximum can make it smaller
        self.published = 0
        self.connected = False
        self.stopping = False
        self.resync_until = 0.0

    # ----------------------------------------------------------------- taking messages

    def enqueue(self, out: Out, wait: bool = False) -> None:
        """Queue `out`; publish it from this thread when nothing waits and nobody sends."""
        ob = self.ob
        with ob.lock:
            if wait and self.connected and len(ob.items) >= WINDOW:
                deadline = time.monotonic() + ROOM_WAIT_S
                while self.connected and not self.stopping and len(ob.items) >= WINDOW:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    ob.room.wait(left)
            # the limit is for outages; while connected a short queue always passes
            limit = self.cfg.backlog_limit
            cap = max(limit, WINDOW) if self.connected else limit
            if len(ob.items) >= cap:
                if cap == 0:
                    ob.dropped += 1
                    return
                ob.drop_oldest()
                if ob.dropped == 1 or ob.dropped % 1000 == 0:
                    self._say_dropped(cap)
            direct = not ob.items and self._may_send()
            if direct:
                # Nothing is waiting and nobody is sending: publish from this thread (a
                # worker's) instead of waking the sender; order is kept by `sending`.
                ob.sending = True
                epoch = self.epoch
            else:
                ob.items.append(out)
                if len(ob.items) == 1:
                    ob.cond.notify_all()  # the sender of the link that drains the outbox now
        if direct:
            self._publish_batch([out], epoch)

    def _say_dropped(self, cap: int) -> None:
        if self.connected:
            log.warning(
                "MQTT: %s takes messages more slowly than they come and the backlog is full "
                "(%d): %d oldest message(s) dropped so far; check the broker's load, or lower "
                "the sources' rates",
                self.broker,
                cap,
                self.ob.dropped,
            )
        else:
            log.warning(
                "MQTT: backlog full (mqtt.backlog_limit=%d) while %s is unreachable: %d "
                "oldest message(s) dropped so far",
                self.cfg.backlog_limit,
                self.broker,
                self.ob.dropped,
            )

    def _may_send(self) -> bool:
        """Whether messages may go to paho now (lock held)."""
        return (
            self.connected
            and not self.stopping
            and not self.ob.sending
            and self.in_paho() < self.in_flight_max
            and not (self.unconfirmed and time.monotonic() < self.resync_until)
        )

    def in_paho(self) -> int:
        """Messages handed to paho and not yet written (QoS 0) or acknowledged (lock held)."""
        if self.by_info:
            unwritten = self.unwritten
            while unwritten and _written(unwritten[0][0]):
                unwritten.popleft()
                self.published += 1
            if self.direct:
                waiting = [info for info in self.direct if not _written(info)]
                self.published += len(self.direct) - len(waiting)
                self.direct = waiting
            return len(unwritten)
        return len(self.unconfirmed)

    def direct_publish(self, topic: str, payload: bytes) -> None:
        """A retained QoS 1 message straight to paho (not through the outbox)."""
        info = self.client.publish(topic, payload, qos=1, retain=True)
        if not self.by_info:
            with self.ob.lock:
                code = self.early_denied.pop(info.mid, None)
                if code is not None:
                    self.denials.denied(topic, code)
                else:
                    self.direct_topics[info.mid] = topic
                    if len(self.direct_topics) > 4 * WINDOW:
                        self.direct_topics.clear()
        if self.by_info:
            with self.ob.lock:
                self.direct.append(info)
                if len(self.direct) > WINDOW:
                    del self.direct[: -WINDOW // 2]  # a long outage: count what is recent

    # ----------------------------------------------------------------- the sender

    def send_loop(self) -> None:
        """The sender thread: hand the outbox to paho while the window has room."""
        ob = self.ob
        while True:
            with ob.cond:
                while not self.stopping and not (ob.items and self._may_send()):
                    self.window_wait = True
                    # waiting for window room with no on_publish to say paho wrote: poll
                    ob.cond.wait(0.005 if ob.items and self.unwritten else 0.5)
                self.window_wait = False
                if self.stopping:
                    return
                self.resync_until = 0.0
                epoch = self.epoch
                n = min(len(ob.items), self.in_flight_max - self.in_paho(), BATCH)
                batch = ob.take(n)
                ob.sending = True
                ob.room.notify_all()
            self._publish_batch(batch, epoch)

    def _publish_batch(self, batch: list[Out], epoch: int) -> None:
        """Hand `batch` (taken from the outbox with `sending` set) to paho, then record it."""
        try:
            sent, unsent = self._hand_to_paho(batch)
            with self.ob.cond:
                self._record(sent, unsent, broken=self.epoch != epoch)
        finally:
            with self.ob.cond:
                self.ob.sending = False
                if self.ob.items:
                    self.ob.cond.notify_all()

    def _hand_to_paho(self, batch: list[Out]) -> tuple[list[tuple[Any, Out]], list[Out]]:
        client = self.client
        sent: list[tuple[Any, Out]] = []
        for i, out in enumerate(batch):
            try:
                info = client.publish(
                    out.topic, out.payload, qos=out.qos, retain=out.retain, properties=out.props
                )
            except Exception:
                log.exception("MQTT: could not publish to %s; message dropped", out.topic)
                continue
            if info.rc == paho.MQTT_ERR_NO_CONN and out.qos == 0:
                return sent, batch[i:]  # not sent: keep these first in line
            sent.append((info, out))
        return sent, []

    def _record(self, sent: list[tuple[Any, Out]], unsent: list[Out], broken: bool) -> None:
        """What paho took, recorded (lock held); what it will not send goes back in line."""
        again: list[Out] = []  # handed to paho, not written when the link broke
        for info, out in sent:
            if self.by_info:
                if broken and not _written(info):
                    again.append(out)
                else:
                    self.unwritten.append((info, out))
                continue
            mid = info.mid
            # acknowledged already: its on_publish came first (`early`), or came
            # and was wiped from `early` by a disconnect in between
            if mid in self.early or _acknowledged(info):
                self.early.discard(mid)
                code = self.early_denied.pop(mid, None)
                if code is not None:
                    self.denials.denied(out.topic, code)
            elif broken and out.qos == 0:
                again.append(out)  # the link broke meanwhile: send again rather than lose
            else:
                self.unconfirmed[mid] = out
        # back in line behind what the disconnect put back (older than this batch)
        # and ahead of the rest of the outbox (newer)
        self.ob.put_back(again + unsent, behind=self.ob.requeued if broken else 0)
        if len(self.early) > 4 * WINDOW:
            self.early.clear()  # confirmations of direct publishes (health, status)

    # ----------------------------------------------------------------- connection changes

    def published_one(self, mid: int, reason: Any = None) -> None:
        """paho wrote a QoS 0 message or the broker acknowledged a QoS 1/2 one (not with qos 0).

        `reason` is the MQTT 5 PUBACK/PUBREC reason code (paho 2 only): 0x80 and above is
        the broker refusing the message (0x87 Not authorized: its ACL), counted by topic
        kind in `denials`, not as published."""
        code = _reason_code(reason)
        with self.ob.cond:
            out = self.unconfirmed.pop(mid, None)
            if out is None:
                self.early.add(mid)  # not recorded yet, or a direct publish (online, health)
            if code is not None and code >= 0x80:
                topic = out.topic if out is not None else self.direct_topics.pop(mid, None)
                if topic is None:
                    self.early_denied[mid] = code  # its topic is known once recorded
                else:
                    self.denials.denied(topic, code)
            else:
                self.published += 1
                if out is None:
                    self.direct_topics.pop(mid, None)
            if self.window_wait and self.ob.items:  # the sender waits for window room
                self.ob.cond.notify_all()

    def came_up(self, in_flight: int) -> None:
        with self.ob.lock:
            self.in_flight_max = in_flight
            self.connected = True
            if self.unconfirmed:
                self.resync_until = time.monotonic() + RESEND_WAIT

    def went_down(self) -> bool:
        """The link broke: QoS 0 messages paho has not written go back in front. Was it up?"""
        ob = self.ob
        with ob.cond:
            was = self.connected
            self.connected = False
            lost = [mid for mid, out in self.unconfirmed.items() if out.qos == 0]
            for mid in reversed(lost):
                ob.items.appendleft(self.unconfirmed.pop(mid))
            self.in_paho()  # count what was written
            ob.items.extendleft(reversed([out for _, out in self.unwritten]))
            ob.requeued = len(lost) + len(self.unwritten)
            self.unwritten.clear()
            # `direct` stays: paho resends unacknowledged QoS 1 messages (an "online" the
            # broker died before acknowledging) after reconnecting; counted once acknowledged
            self.early.clear()
            self.epoch += 1
            ob.cond.notify_all()
            ob.room.notify_all()
        return was

    def flush(self, deadline: float) -> int:
        """Wait (until `deadline`) for the outbox to be delivered, then stop sending.

        Returns how many messages were not delivered."""
        ob = self.ob
        with ob.cond:
            while self.connected and (ob.items or self.in_paho()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ob.cond.wait(min(left, 0.02 if self.by_info else 0.2))
            left_over = len(ob.items) + self.in_paho()
            self.stopping = True
            ob.cond.notify_all()
            ob.room.notify_all()
        return left_over

    def give_back(self) -> None:
        """After the client stopped: what paho still held goes back to the outbox's front,
        for the link that replaces this one (a reload) to send."""
        with self.ob.lock:
            held = list(self.unconfirmed.values()) + [out for _, out in self.unwritten]
            self.unconfirmed.clear()
            self.unwritten.clear()
            self.ob.put_back(held)


def _reason_code(reason: Any) -> int | None:
    """The number of paho 2's ReasonCode (or None at paho 1.6 / MQTT 3.1.1)."""
    if reason is None:
        return None
    value = getattr(reason, "value", reason)
    return value if isinstance(value, int) else None


def _reason_name(code: int) -> str:
    try:
        from paho.mqtt.reasoncodes import ReasonCode

        return str(ReasonCode(PacketTypes.PUBACK, identifier=code))
    except Exception:  # a code paho does not name
        return f"reason code {code:#04x}"


# MQTT 5 DISCONNECT reason codes a broker sends for what it refused in a publish (brokers
# set to disconnect on an ACL denial send 0x87): counted as a denial of kind "disconnect".
DENYING_DISCONNECTS = frozenset({0x87, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B})


class Denials:
    """Publishes the broker refused (MQTT 5 PUBACK reason code >= 0x80), per topic kind
    (results, replies, discovery, health, status, events, fleet, other). The first of each
    kind is logged at warning with the topic and what to change; the rest are counted
    (health: mqtt.publish_denied). Guarded by the outbox's lock (the Window holds it)."""

    def __init__(self, broker: str, kind_of: Callable[[str], str]) -> None:
        self.broker = broker
        self.kind_of = kind_of
        self.counts: dict[str, int] = {}

    def disconnected(self, reason: str) -> None:
        """The broker closed the link for something it refused (DENYING_DISCONNECTS)."""
        self.counts["disconnect"] = self.counts.get("disconnect", 0) + 1
        log.warning(
            "MQTT: %s closed the connection refusing a publish (%s): brokers set to disconnect "
            "on an ACL denial do this. Let the daemon's user write its topics, replies and "
            'discovery in the broker\'s ACL (docs/mqtt.md, "Broker ACL"); counted in health '
            "(mqtt.publish_denied.disconnect)",
            self.broker,
            reason,
        )

    def denied(self, topic: str, code: int) -> None:
        kind = self.kind_of(topic)
        first = kind not in self.counts
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if first:
            log.warning(
                "MQTT: %s refused a publish to %s (%s): %s are not delivered. Let the "
                "daemon's user write there in the broker's ACL (docs/mqtt.md, \"Broker "
                'ACL"); further refusals of %s are counted in health '
                "(mqtt.publish_denied.%s), not logged",
                self.broker,
                topic[:200],
                _reason_name(code),
                kind,
                kind,
                kind,
            )


class _Failures:
    """Why connection attempts fail, said on the 1st, 10th and every 100th in a row."""

    def __init__(self, cfg: MqttConfig, broker: str, client_id: str, window: Window) -> None:
        self.cfg = cfg
        self.broker = broker
        self.client_id = client_id
        self.window = window
        self.in_a_row = 0  # attempts since the last connection; reset on CONNACK
        self.refused = False  # the last attempt ended in a CONNACK refusal, already logged
        self._probing = False  # a thread is finding out why attempts fail

    def connack_refused(self, code: int, rc: Any) -> None:
        """The broker answered CONNACK with a refusal: logged on the 1st, 10th and every
        100th attempt in a row (with 30 s backoff, not twice a minute for ever)."""
        self.in_a_row += 1
        self.refused = True
        attempt = self.in_a_row
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
                rc_text(rc),
                self.cfg.password_file or "mqtt.password_file",
            )
        else:
            log.log(
                level,
                "MQTT: broker %s refused the connection (attempt %d): %s; retrying with "
                "backoff up to 30 s",
                self.broker,
                attempt,
                rc_text(rc),
            )

    def attempt_failed(self, *, dropped: bool) -> None:
        """One failed connection attempt: the 1st, 10th and every 100th are explained.

        `dropped`: the connection opened, then closed before the broker's CONNACK (a TLS
        listener spoken to in plain MQTT, a client certificate the broker wants).
        The cause is found by `broker_probe` in a thread of its own, so paho's loop
        keeps retrying meanwhile.
        """
        self.in_a_row += 1
        attempt = self.in_a_row
        if not _worth_saying(attempt):
            log.debug("MQTT: connection attempt %d to %s failed", attempt, self.broker)
            return
        with self.window.ob.lock:
            if self._probing or self.window.stopping:
                return
            self._probing = True
        threading.Thread(
            target=self._explain, args=(attempt, dropped), name="mqtt:probe", daemon=True
        ).start()

    def _explain(self, attempt: int, dropped: bool) -> None:
        try:
            cause = broker_probe.probe(self.cfg)
        except Exception:  # the probe only explains; never let it break the link
            log.exception("MQTT: could not find out why %s refuses connections", self.broker)
            cause = None
        finally:
            with self.window.ob.lock:
                self._probing = False
        if cause is None and dropped:
            cause = (
                "the broker accepted the network connection and then closed it before "
                "accepting the client; its log says why (a client id already in use, a "
                "connection limit, an MQTT version it does not take)"
            )
        elif cause is None:
            tls = " and the TLS settings" if self.cfg.tls else ""
            cause = (
                "it answered a test connection just now, so it may have been restarting; "
                f"if this repeats, check mqtt.host/mqtt.port{tls}"
            )
        log.warning(
            "MQTT: cannot connect to %s (attempt %d): %s; retrying with backoff up to 30 s",
            self.broker,
            attempt,
            cause,
        )

    def disconnect_text(self, rc: Any, connected_for: float) -> str:
        """Why the link broke, in words: paho 1.6 gives bare numbers, paho 2 "Unspecified error"."""
        code = rc_value(rc)
        if code == 0:
            return "closed by the broker"
        if code == 142:  # MQTT 5 "Session taken over"
            return (
                f"another client connected with this daemon's client id {self.client_id!r} and "
                "took the session over; give each daemon its own daemon.node_id or mqtt.client_id"
            )
        if code == 128 or (not hasattr(rc, "value") and code == paho.MQTT_ERR_CONN_LOST):
            text = "the connection broke: the broker stopped or restarted, or the network failed"
            if connected_for < QUICK_LOSS_S:
                text += (
                    f"; if this repeats soon after every reconnect, another client may be "
                    f"using this daemon's client id {self.client_id!r}: give each daemon its "
                    "own daemon.node_id or mqtt.client_id"
                )
            return text
        if hasattr(rc, "value"):
            return str(rc)
        return str(paho.error_string(code))


class Transport:
    """One paho client: connects in the background, reconnects, drains the outbox.

    `on_message` gets every incoming message on paho's thread (it must not block);
    `on_up` runs on paho's thread once a connection is up, subscribed to the node's
    requests and `online` published, before `on_connection(True)`.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        outbox: Outbox,
        *,
        client_id: str,
        on_message: Callable[[Incoming], None],
        on_up: Callable[[], None],
        on_connection: Callable[[bool], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.client_id = client_id
        self._v5 = cfg.protocol == "5"
        self._on_message = on_message
        self._on_up = on_up
        self._on_connection = on_connection
        self._connected_at = 0.0
        self.connects = 0
        self._started = False
        self._stopped = False
        self.client = self._make_client()
        self.window = Window(
            outbox,
            self.client,
            cfg,
            self.broker,
            denials=Denials(self.broker, lambda t: topics.kind_of(t, cfg.homeassistant_prefix)),
        )
        self._owner = outbox.adopt()  # another link adopting it later takes what is left
        self.failures = _Failures(cfg, self.broker, client_id, self.window)
        self._sender = threading.Thread(
            target=self.window.send_loop, name="mqtt:sender", daemon=True
        )

    @property
    def broker(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    @property
    def connected(self) -> bool:
        return self.window.connected

    def _make_client(self) -> Any:
        cfg = self.cfg
        kw: dict[str, Any] = {
            "client_id": self.client_id,
            "protocol": protocol_of(cfg),
            "transport": cfg.transport,
        }
        if not self._v5:
            kw["clean_session"] = True
        client = paho_client(**kw)
        if PAHO2:
            client.on_connect = lambda c, u, flags, rc, props=None: self._handle_connect(rc, props)
            client.on_disconnect = lambda c, u, flags, rc, props=None: self._handle_disconnect(rc)
        elif self._v5:
            client.on_connect = lambda c, u, flags, rc, props=None: self._handle_connect(rc, props)
            client.on_disconnect = lambda c, u, rc, props=None: self._handle_disconnect(rc)
        else:
            client.on_connect = lambda c, u, flags, rc: self._handle_connect(rc)
            client.on_disconnect = lambda c, u, rc: self._handle_disconnect(rc)
        if cfg.qos != 0:  # paho 1.6: (c, u, mid); paho 2: (c, u, mid, reason, props)
            client.on_publish = lambda c, u, mid, *rest: self.window.published_one(
                mid, rest[0] if rest else None
            )
        client.on_message = lambda c, u, msg: self._handle_message(msg)
        if hasattr(client, "on_connect_fail"):
            client.on_connect_fail = lambda c, u: self.failures.attempt_failed(dropped=False)
        # No limit in paho: the link's own WINDOW bounds what paho holds unacknowledged.
        # With a limit paho rescans every message it holds on each acknowledgement (its
        # _update_inflight): at QoS 1 with 8 simulated TPUs its thread cost 136-142 us a
        # result with 100, 309-323 with 1000, 73-78 with none (docs/benchmarks.md).
        client.max_inflight_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        authenticate(client, cfg)
        if cfg.tls and cfg.tls_insecure:
            log.warning("mqtt.tls_insecure is set: the broker's host name is NOT verified")
        client.will_set(self.topics.status, OFFLINE, qos=1, retain=True)
        return client

    # ----------------------------------------------------------------- what the link calls

    def start(self) -> None:
        """Connect in the background (never blocks on the broker); reconnects with 1-30 s backoff."""
        if self._started:
            return
        self._started = True
        self._sender.start()
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=round(self.cfg.keepalive))
        self.client.loop_start()
        log.info(
            "MQTT: connecting to %s as %s (topics %s/...)",
            self.broker,
            self.client_id,
            self.topics.base,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Flush the outbox (up to `timeout`), publish retained offline, disconnect. Idempotent.

        What is not delivered stays in the outbox, for a link that took it over (a reload
        that changed [mqtt] creates the new link, with this outbox, before stopping this one)."""
        if self._stopped:
            return
        self._stopped = True
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        left_over = self.window.flush(deadline)
        if left_over and self.window.ob.owner != self._owner:
            log.info(
                "MQTT: %d message(s) not yet delivered to %s go to the new link",
                left_over,
                self.broker,
            )
        elif left_over:
            log.warning(
                "MQTT: stopping with %d message(s) not delivered to %s", left_over, self.broker
            )
        if self.connected:
            info = self.client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self.client.disconnect()
        self.client.loop_stop()
        self._sender.join(timeout=2.0)
        self.window.give_back()
        if self.connects:
            log.info("MQTT: disconnected from %s", self.broker)
        else:
            log.warning("MQTT: stopped without ever connecting to %s", self.broker)

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """A retained QoS 1 message (status, health, discovery), not through the outbox."""
        self.window.direct_publish(topic, payload)

    def subscribe(self, topics: list[str]) -> None:
        if topics:
            self.client.subscribe([(t, 1) for t in topics])

    def unsubscribe(self, topics: list[str]) -> None:
        if topics:
            self.client.unsubscribe(topics)

    # ----------------------------------------------------------------- paho's thread

    def _handle_message(self, msg: Any) -> None:
        try:
            self._on_message(incoming(msg))
        except Exception:
            log.exception("MQTT: message on %s could not be handled", getattr(msg, "topic", "?"))

    def _handle_connect(self, rc: Any, props: Any = None) -> None:
        code = rc_value(rc)
        if code != 0:
            self.failures.connack_refused(code, rc)
            return
        # MQTT 5: no more QoS 1/2 messages unacknowledged than the broker's Receive Maximum
        # (absent: 65535); a few are kept for "online", health and discovery
        receive_max = getattr(props, "ReceiveMaximum", None) if self.cfg.qos > 0 else None
        in_flight = min(WINDOW, max(1, receive_max - DIRECT_RESERVE)) if receive_max else WINDOW
        if in_flight != self.window.in_flight_max:
            log.debug(
                "MQTT: at most %d results unacknowledged (broker: %s)", in_flight, receive_max
            )
        _no_delay(self.client)
        self.client.direct_writes = self.cfg.transport == "tcp" and not self.cfg.tls
        # Requests first: the broker handles one connection's packets in order, so a
        # client that sends a request as soon as it sees "online" finds it subscribed.
        self.client.subscribe(self.topics.infer("+"), qos=1)
        # "online" next, before anyone can see us connected and publish "offline" in stop()
        self.window.direct_publish(self.topics.status, ONLINE)
        self.window.came_up(in_flight)
        self._connected_at = time.monotonic()
        self.connects += 1
        self.failures.in_a_row = 0
        log.info("MQTT: connected to %s", self.broker)
        try:
            self._on_up()
        except Exception:
            log.exception("MQTT: could not publish this node's state after connecting")
        with self.window.ob.cond:
            self.window.ob.cond.notify_all()
        self._notify_connection(True)

    def _handle_disconnect(self, rc: Any) -> None:
        code = rc_value(rc)
        if code in DENYING_DISCONNECTS and hasattr(rc, "value"):  # an MQTT 5 DISCONNECT
            with self.window.ob.lock:
                self.window.denials.disconnected(str(rc))
        was = self.window.went_down()
        if was and not self.window.stopping:
            log.warning(
                "MQTT: lost connection to %s (%s); keeping up to %d results until it is back",
                self.broker,
                self.failures.disconnect_text(rc, time.monotonic() - self._connected_at),
                self.cfg.backlog_limit,
            )
        if was:
            self._notify_connection(False)
        elif self.failures.refused:
            self.failures.refused = False  # the refusal said why
        elif not self.window.stopping:
            self.failures.attempt_failed(dropped=True)

    def _notify_connection(self, up: bool) -> None:
        if self._on_connection is None:
            return
        try:
            self._on_connection(up)
        except Exception:
            log.exception("MQTT: the on_connection callback failed")
