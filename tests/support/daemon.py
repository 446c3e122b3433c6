"""Run the real daemon as a subprocess, the way systemd would, and watch what it says.

`Daemon` writes a config, starts `python -m edgetpud run --config …` with its own
NOTIFY_SOCKET (a datagram socket this test owns), and records every sd_notify
message. It inherits the test's environment, so under `umockdev-wrapper` the
daemon sees the test's umockdev testbed and its uevents.

Pair it with `tests.support.broker.Broker` and `Subscriber` for MQTT.

`config_toml` is the tests' one writer of a daemon config: the keys every test daemon
shares (node, state_dir, a 1 s health interval, a broker on 127.0.0.1) and what a test adds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]


def config_toml(
    *,
    node: str,
    state_dir: Path,
    port: int | str,
    prefix: str,
    library: Path | str | None = None,
    daemon: str = "",
    mqtt: str = "",
    devices: str | None = None,
    rest: str = "",
) -> str:
    """A daemon config: [daemon] with node_id, state_dir, health_interval = "1s" and the lines
    `daemon`; [mqtt] on 127.0.0.1:`port` under `prefix` with the lines `mqtt`; [runtime] with
    `library` if given; [devices] with the lines `devices` if given; then `rest` (more
    sections: models, frigate, fleet ...) as it is."""
    runtime = f'[runtime]\nlibrary = "{library}"\n' if library is not None else ""
    devices_table = f"[devices]\n{devices}" if devices is not None else ""
    return f"""
[daemon]
node_id = "{node}"
state_dir = "{state_dir}"
health_interval = "1s"
{daemon}
[mqtt]
host = "127.0.0.1"
port = {port}
topic_prefix = "{prefix}"
{mqtt}
{runtime}{devices_table}
{rest}
"""


class Daemon:
    """One `edgetpud run` process with a private notify socket and log file."""

    def __init__(self, workdir: Path, config_text: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "edgetpud.toml"
        self.config.write_text(config_text)
        self.log_path = workdir / "daemon.log"
        self.notify_path = workdir / "notify.sock"
        self.notifications: list[tuple[float, str]] = []
        self._env = dict(os.environ, **(env or {}))
        self._env["NOTIFY_SOCKET"] = str(self.notify_path)
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None

    def start(self, *extra_args: str, watchdog_usec: int = 0) -> Daemon:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.notify_path))
        self._sock.settimeout(0.2)
        self._reader = threading.Thread(target=self._read_notify, name="test:notify", daemon=True)
        self._reader.start()
        env = dict(self._env)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgetpud", *extra_args, "run", "--config", str(self.config)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def _read_notify(self) -> None:
        assert self._sock is not None
        while self._sock is not None:
            try:
                data = self._sock.recv(65536)
            except (TimeoutError, OSError):
                if self.proc is not None and self.proc.poll() is not None and self._sock is None:
                    return
                continue
            now = time.monotonic()
            for line in data.decode().splitlines():
                self.notifications.append((now, line))

    def said(self, prefix: str) -> list[str]:
        return [line for _, line in list(self.notifications) if line.startswith(prefix)]

    def wait_ready(self, timeout: float = 60.0, count: int = 1) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            return len(self.said("READY=1")) >= count

        wait_for(ready, timeout, f"READY=1 (#{count})\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def reload(self, config_text: str | None = None) -> None:
        if config_text is not None:
            self.config.write_text(config_text)
        self.signal(signal.SIGHUP)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (kills it if it overstays)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(
                    f"daemon did not stop within {timeout} s:\n{self.log()[-3000:]}"
                ) from None
        return self.proc.returncode

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
