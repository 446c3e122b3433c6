"""A real mosquitto on a free loopback port, started by the test that needs it.

    broker = Broker(tmp_path)                  # plain TCP, anonymous
    broker = Broker(tmp_path, tls=True)        # + CA and server certificate made with openssl
    broker = Broker(tmp_path, tls=True, require_certificate=True)  # clients must show one;
                                               # its CN is the user name (for the ACL)
    broker = Broker(tmp_path, users={"edge": "s3cret"}, acl="user edge\\ntopic readwrite #\\n")
    broker.start(); ...; broker.kill(); broker.restart(); broker.stop()

`restart()` comes back on the same port. `max_queued_messages=0` lifts the per-client
queue limit (mosquitto's default of 1000 silently drops when a test floods a slow
subscriber). Use `broker_fixture` style: `with Broker(tmp_path) as b:`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_certs(folder: Path, host: str = "localhost") -> dict[str, Path]:
    """A CA, a server certificate for `host` (and 127.0.0.1) and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = folder / "ca.key", folder / "ca.crt"
    run = _openssl
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edgetpud test CA",
        "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    out: dict[str, Path] = {"ca": ca}
    for name, cn in (("server", host), ("client", "edgetpud-client")):
        key, csr, crt, ext = (folder / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key),
            "-out", str(csr))  # fmt: skip
        ext.write_text(
            f"subjectAltName=DNS:{host},IP:127.0.0.1\n"
            if name == "server"
            else "basicConstraints=CA:FALSE\n"
        )
        run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-out", str(crt), "-extfile", str(ext))  # fmt: skip
        key.chmod(0o600)
        out[f"{name}_key"], out[f"{name}_crt"] = key, crt
    return out


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


class Broker:
    """One mosquitto process with a generated config; see the module docstring."""

    def __init__(
        self,
        folder: Path,
        *,
        tls: bool = False,
        require_certificate: bool = False,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        max_queued_messages: int | None = None,
        max_inflight_messages: int | None = None,
        nodelay: bool = False,
        persistence: bool = False,
        port: int | None = None,
        log_all: bool = False,
    ) -> None:
        self.folder = folder / f"mosquitto-{id(self):x}"
        self.folder.mkdir(parents=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.certs: dict[str, Path] = make_certs(self.folder / "certs") if tls else {}
        self.log_path = self.folder / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            *(
                [
                    f"persistence true\npersistence_location {self.folder}/",
                    "autosave_interval 0",
                    # write every queued message to its subscriber at once instead of 20
                    # unacknowledged at a time: what was written survives a SIGKILL in the
                    # subscriber's socket, what waited for room in broker memory would not
                    "max_inflight_messages 0",
                    # a QoS 0 subscriber's persistent session (fault_rig's) queues too
                    "queue_qos0_messages true",
                ]
                if persistence
                else ["persistence false"]
            ),
            f"allow_anonymous {'false' if users else 'true'}",
            *(["set_tcp_nodelay true"] if nodelay else []),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            *(["log_type all"] if log_all else []),  # debug: "Denied PUBLISH from ..."
        ]
        if os.geteuid() == 0:
            lines.append(
                "user root"
            )  # else mosquitto drops to "mosquitto" and cannot read tmp_path
        if max_queued_messages is not None:
            lines.append(f"max_queued_messages {max_queued_messages}")
        if max_inflight_messages is not None and not persistence:  # persistence sets 0
            lines.append(f"max_inflight_messages {max_inflight_messages}")
        if tls:
            lines += [
                f"cafile {self.certs['ca']}",
                f"certfile {self.certs['server_crt']}",
                f"keyfile {self.certs['server_key']}",
            ]
            if require_certificate:
                lines += ["require_certificate true", "use_identity_as_username true"]
        if users:
            pwfile = self.folder / "passwd"
            for i, (user, password) in enumerate(users.items()):
                flags = ["-b", "-c"] if i == 0 else ["-b"]
                subprocess.run(
                    ["mosquitto_passwd", *flags, str(pwfile), user, password],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
            pwfile.chmod(0o600)
            lines.append(f"password_file {pwfile}")
        if acl is not None:
            acl_file = self.folder / "acl"
            acl_file.write_text(acl)
            acl_file.chmod(0o600)
            lines.append(f"acl_file {acl_file}")
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 20.0) -> Broker:
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(
            f"mosquitto did not listen on {self.port} within {timeout} s:\n{self.log()}"
        )

    def stop(self) -> None:
        """SIGTERM and wait (clients see the connection close)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes mid-stream, as in a crash or a power cut."""
        self._end(signal.SIGKILL)

    def restart(self, timeout: float = 20.0) -> Broker:
        self.stop()
        return self.start(timeout)

    def _end(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Subscriber:
    """A test-side MQTT client (paho 1.6 or 2.x) that records every message it gets."""

    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        *,
        protocol: str = "5",
        client_id: str = "",
        persistent: bool = False,
        qos: int = 1,
    ) -> None:
        import paho.mqtt.client as paho

        self._paho = paho
        self.broker = broker
        self.topics = topics
        self.qos = qos
        self.messages: list[Any] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        v5 = protocol == "5"
        kw: dict[str, Any] = {
            "client_id": client_id or f"test-sub-{id(self):x}",
            "protocol": paho.MQTTv5 if v5 else paho.MQTTv311,
        }
        if not v5:
            kw["clean_session"] = not persistent
        try:
            from paho.mqtt.enums import CallbackAPIVersion

            self.client = paho.Client(CallbackAPIVersion.VERSION2, **kw)
            self.client.on_connect = lambda c, u, f, rc, p=None: self._connected()
            self.client.on_subscribe = lambda c, u, mid, rcs, p=None: self._subscribed.set()
        except ImportError:
            self.client = paho.Client(**kw)
            self.client.on_connect = lambda c, u, f, rc, p=None: self._connected()
            self.client.on_subscribe = lambda c, u, mid, *rest: self._subscribed.set()
        self.client.on_message = lambda c, u, msg: self._message(msg)
        self.client.reconnect_delay_set(0.2, 1)
        self._connect_kw: dict[str, Any] = {}
        if v5 and persistent:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self._connect_kw = {"clean_start": False, "properties": props}

    def tls(self, ca: Path, cert: Path | None = None, key: Path | None = None) -> Subscriber:
        self.client.tls_set(
            ca_certs=str(ca),
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
        )
        return self

    def login(self, user: str, password: str) -> Subscriber:
        self.client.username_pw_set(user, password)
        return self

    def start(self, timeout: float = 20.0) -> Subscriber:
        self.client.connect(self.broker.host, self.broker.port, keepalive=30, **self._connect_kw)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"no SUBACK from the test broker within {timeout} s")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _connected(self) -> None:
        self.client.subscribe([(t, self.qos) for t in self.topics])

    def _message(self, msg: Any) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def on(self, topic: str) -> list[Any]:
        with self._cond:
            return [m for m in self.messages if self._paho.topic_matches_sub(topic, m.topic)]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 30.0) -> list[Any]:
        """The messages on `topic` (a filter) once there are `count`; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [m for m in self.messages if self._paho.topic_matches_sub(topic, m.topic)]
                left = deadline - time.monotonic()
                if len(got) >= count or left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
        if len(got) < count:
            raise AssertionError(
                f"{len(got)} message(s) on {topic} within {timeout} s, wanted {count}"
            )
        return got

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, *, wait: bool = True, **props: Any
    ) -> Any:
        """Publish, with MQTT 5 properties by name (ResponseTopic=..., CorrelationData=...).
        With `wait=False`, return paho's MQTTMessageInfo instead of waiting for the PUBACK."""
        properties = None
        if props:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.PUBLISH)
            for key, value in props.items():
                setattr(properties, key, value)
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        if wait:
            info.wait_for_publish(30)
        return info

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
