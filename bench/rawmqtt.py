"""Just enough MQTT (3.1.1 and 5) over a blocking socket, for measuring the broker and the daemon.

A benchmark client should cost as little as possible, so that what it measures is the
broker and the daemon rather than itself: `publish` writes from the calling thread, and
with `on_message` a reader thread blocks in recv() and answers QoS 1 messages with PUBACK.
No reconnect, no QoS 2, no retransmission: a lost connection raises or ends the reader.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
# MQTT 5 property identifiers this client writes or must step over when reading
CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA = 0x03, 0x08, 0x09
_FIXED = {0x01: 1, 0x02: 4, 0x11: 4, 0x13: 2, 0x17: 1, 0x19: 1, 0x21: 2, 0x22: 2, 0x23: 2}
_FIXED.update({0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1})
_STRINGS = {0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _str(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def properties(props: dict[int, bytes]) -> bytes:
    """MQTT 5 properties: each value is a UTF-8 string or binary data (2-byte length)."""
    body = b"".join(bytes([key]) + _str(value) for key, value in props.items())
    return varint(len(body)) + body


def parse_properties(data: bytes, pos: int) -> tuple[dict[int, bytes], int]:
    """The string and binary properties at `pos` (others skipped), and the offset after them."""
    length, pos = _varint_at(data, pos)
    end, found = pos + length, {}
    while pos < end:
        key = data[pos]
        pos += 1
        if key in _STRINGS:
            (n,) = struct.unpack_from(">H", data, pos)
            found[key] = data[pos + 2 : pos + 2 + n]
            pos += 2 + n
        elif key == 0x26:  # user property: a pair of strings
            for _ in range(2):
                (n,) = struct.unpack_from(">H", data, pos)
                pos += 2 + n
        elif key == 0x0B:  # subscription identifier
            _, pos = _varint_at(data, pos)
        else:
            pos += _FIXED[key]
    return found, end


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    props: dict[int, bytes] = field(default_factory=dict)


class RawClient:
    """One blocking MQTT connection (version 4 = 3.1.1, or 5) to a local broker."""

    def __init__(self, host: str, port: int, client_id: str, version: int = 5) -> None:
        self.v5 = version == 5
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send_lock = threading.Lock()
        self._next_id = 0
        body = _str(b"MQTT") + bytes([version, 2]) + struct.pack(">H", 60)
        body += (varint(0) if self.v5 else b"") + _str(client_id.encode())
        self._send(CONNECT << 4, body)
        kind, reply = self._read()
        if kind >> 4 != CONNACK or reply[1] != 0:
            raise ConnectionError(f"the broker refused {client_id!r} (CONNACK {reply[:2]!r})")

    def _send(self, header: int, body: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(bytes([header]) + varint(len(body)) + body)

    def _exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the broker closed the connection")
            data += chunk
        return bytes(data)

    def _read(self) -> tuple[int, bytes]:
        header = self._exact(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._exact(1)[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return header, self._exact(length)

    def _packet_id(self) -> int:
        with self._send_lock:
            self._next_id = self._next_id % 65535 + 1
            return self._next_id

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, props: dict[int, bytes] | None = None
    ) -> None:
        """Write one PUBLISH from this thread (a QoS 1 PUBACK is read and dropped by the reader)."""
        body = _str(topic.encode())
        if qos:
            body += struct.pack(">H", self._packet_id())
        if self.v5:
            body += properties(props or {})
        self._send((PUBLISH << 4) | (qos << 1), body + payload)

    def subscribe(
        self, topic_filter: str, qos: int = 0, on_message: Callable[[Message], None] | None = None
    ) -> None:
        """Subscribe and wait for SUBACK; with `on_message`, a reader thread delivers each message."""
        body = struct.pack(">H", self._packet_id()) + (varint(0) if self.v5 else b"")
        self._send((SUBSCRIBE << 4) | 2, body + _str(topic_filter.encode()) + bytes([qos]))
        kind, _ = self._read()
        if kind >> 4 != SUBACK:
            raise ConnectionError(f"no SUBACK for {topic_filter!r} (got packet type {kind >> 4})")
        if on_message is None:
            return
        self.sock.settimeout(None)

        def loop() -> None:
            while True:
                try:
                    msg = self.next_message()
                except (OSError, EOFError):
                    return
                on_message(msg)

        threading.Thread(target=loop, name="rawmqtt:reader", daemon=True).start()

    def next_message(self) -> Message:
        """Block until the next PUBLISH (acknowledging it at QoS 1); other packets are dropped."""
        while True:
            header, body = self._read()
            if header >> 4 != PUBLISH:
                continue
            qos = (header >> 1) & 3
            (n,) = struct.unpack_from(">H", body)
            topic, pos = body[2 : 2 + n].decode(), 2 + n
            if qos:
                packet_id = body[pos : pos + 2]
                pos += 2
                self._send(PUBACK << 4, packet_id)
            props: dict[int, bytes] = {}
            if self.v5:
                props, pos = parse_properties(body, pos)
            return Message(topic, body[pos:], qos, props)

    def close(self) -> None:
        with suppress(OSError):
            self._send(0xE0, b"")  # DISCONNECT
        self.sock.close()
