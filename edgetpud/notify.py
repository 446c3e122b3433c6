"""systemd notification (sd_notify) without depending on libsystemd.

Speaks the datagram protocol directly: `NOTIFY_SOCKET` names a Unix socket
(a path, or an abstract name starting with "@"). Outside systemd it is a no-op.
Written here rather than taken from the `sdnotify` package: that one connects
once at start-up and swallows every error silently, where a failed notification
should at least reach the debug log.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Send READY/RELOADING/STOPPING/STATUS/WATCHDOG to systemd, if it is listening."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 if usec.isdigit() and mine else 0.0

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:  # systemd gone or socket full: never fatal
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, within: float = 0.0) -> None:
        """STOPPING=1; with `within` seconds, systemd's stop timeout is extended to at least
        that (EXTEND_TIMEOUT_USEC, systemd 236+), so a long drain is not cut by SIGKILL."""
        extend = [f"EXTEND_TIMEOUT_USEC={round(within * 1_000_000)}"] if within > 0 else []
        self.send("STOPPING=1", *extend)

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
