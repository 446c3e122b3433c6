"""Ports where an Edge TPU context could not be established, kept across restarts.

Stored as `<state_dir>/learned-ports.json`. The store never raises: when the
state folder is unwritable or full, or the file is corrupt, it logs one clear
line and carries on in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILENAME = "learned-ports.json"
SCHEMA = "edgetpud.learned-ports/1"
MAX_BYTES = 1 << 20


class LearnedPorts:
    """identity → reason, persisted as JSON; thread-safe."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILENAME
        self._lock = threading.Lock()
        self._ports: dict[str, dict[str, Any]] = {}
        self._warned = False
        self._load()

    def reasons(self) -> dict[str, str]:
        with self._lock:
            return {k: str(v.get("reason", "")) for k, v in self._ports.items()}

    def learn(self, identity: str, reason: str) -> bool:
        """Remember a bad port; True when this changed anything."""
        with self._lock:
            old = self._ports.get(identity)
            if old is not None and old.get("reason") == reason:
                return False
            self._ports[identity] = {
                "reason": reason,
                "learned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            self._save()
            return True

    def forget(self, identity: str) -> bool:
        with self._lock:
            if self._ports.pop(identity, None) is None:
                return False
            self._save()
            return True

    def _load(self) -> None:
        try:
            with self.path.open("rb") as fh:  # bytes: bad UTF-8 is corruption, not a crash
                text = fh.read(MAX_BYTES + 1)  # bounded: a link to /dev/zero must not hang us
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing learned yet; a save that cannot happen will say why
        except OSError as exc:
            self._warn(
                f"cannot read {self.path} ({exc.strerror}); starting with no learned bad ports"
            )
            return
        try:
            if len(text) > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            data = json.loads(text)
            ports = data["ports"]
            if not isinstance(ports, dict) or not all(isinstance(v, dict) for v in ports.values()):
                raise TypeError("ports must map identities to objects")
        except (ValueError, KeyError, TypeError) as exc:
            self._warn(
                f"{self.path} is corrupt ({exc}); starting with no learned bad ports. "
                "It is rewritten on the next change; delete it to silence this"
            )
            return
        self._ports = {str(k): v for k, v in ports.items()}

    def _save(self) -> None:
        data = json.dumps({"schema": SCHEMA, "ports": self._ports}, indent=2, sort_keys=True)
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".learned-ports.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            tmp = None
        except OSError as exc:
            self._warn(
                f"cannot save learned bad ports to {self.path} ({exc.strerror or exc}); keeping "
                "them in memory until restart. Make daemon.state_dir writable by the edgetpud user"
            )
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s", message)
