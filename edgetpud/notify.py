"""systemd notification (sd_notify) through the `sdnotify` package: the only importer of it.

`sdnotify.SystemdNotifier` is created with `debug=True`, so its errors (no socket,
systemd gone, a full queue) reach us instead of vanishing: each is logged at debug
level, and a notifier whose socket broke (systemd re-executed itself and bound the
socket anew) is created again before the next message. Outside systemd
(`NOTIFY_SOCKET` unset) nothing is sent. Never fatal: a lost notification costs
at most a STATUS line or a watchdog ping.
"""

from __future__ import annotations

import logging
import os
import time

import sdnotify

log = logging.getLogger(__name__)


class Notifier:
    """Send READY/RELOADING/STOPPING/STATUS/WATCHDOG to systemd, if it is listening."""

    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sd: sdnotify.SystemdNotifier | None = None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 if usec.isdigit() and mine else 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def _connect(self) -> sdnotify.SystemdNotifier | None:
        # sdnotify reads the address from the environment when it connects
        saved = os.environ.get("NOTIFY_SOCKET")
        os.environ["NOTIFY_SOCKET"] = self._address
        try:
            return sdnotify.SystemdNotifier(debug=True)
        except Exception as exc:  # no such socket, or not a datagram socket
            log.debug("sd_notify: cannot reach %s: %s", self._address, exc)
            return None
        finally:
            if saved is None:
                del os.environ["NOTIFY_SOCKET"]
            else:
                os.environ["NOTIFY_SOCKET"] = saved

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        # sdnotify encodes as Latin-1; this hands it the UTF-8 bytes systemd expects
        state = "\n".join(fields).encode().decode("latin-1")
        for attempt in (1, 2):  # a broken socket is reconnected once
            if self._sd is None:
                self._sd = self._connect()
                if self._sd is None:
                    return
            try:
                self._sd.notify(state)
                return
            except OSError as exc:  # systemd gone or re-executed, or its queue full
                log.debug("sd_notify failed (attempt %d): %s", attempt, exc)
                self.close()

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
        if self._sd is not None and self._sd.socket is not None:
            self._sd.socket.close()
        self._sd = None
