"""What the Frigate endpoint tells people: log lines at most once a minute per client and
problem, `frigate_client` events at most once a second (Frigate reconnects a lot), and
`frigate_unavailable` / `frigate_available` when the model stops or starts serving.

Used from the endpoint's thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

WARN_EVERY_S = 60.0  # one log line per client and problem at most this often
EVENT_GAP_S = 1.0  # "frigate_client" events at most this often
MAX_WARNED = 64 * 8  # (client, problem) pairs remembered before starting afresh

EventSink = Callable[[str, Mapping[str, Any]], None]


class Notices:
    """Rate-limited warnings and events for the endpoint serving `model`."""

    def __init__(self, model: str, on_event: EventSink | None) -> None:
        self.model = model
        self._on_event = on_event
        self._warned: dict[tuple[str, str], float] = {}
        self._last_event = 0.0
        self._events_held = 0
        self.unavailable = ""  # why the last request was refused for want of a device

    def warn(self, client: str, key: str, message: str) -> None:
        """Log `message` unless the same (client, key) was logged in the last minute."""
        now = time.monotonic()
        mark = (client, key)
        if now - self._warned.get(mark, -WARN_EVERY_S) >= WARN_EVERY_S:
            if len(self._warned) > MAX_WARNED:
                self._warned.clear()
            self._warned[mark] = now
            log.warning("%s (said at most once a minute)", message)

    def set_unavailable(self, why: str) -> None:
        """The model cannot serve Frigate now ("" : it serves again); logs and sends an
        event when that changes."""
        before, self.unavailable = self.unavailable, why
        if why and not before:
            log.warning(
                "Frigate endpoint: answering no detections at once: %s; Frigate shows no "
                "objects until the model runs again",
                why,
            )
            self.event("frigate_unavailable", {"model": self.model, "reason": why})
        elif before and not why:
            log.info("Frigate endpoint: model %s serves Frigate again", self.model)
            self.event("frigate_available", {"model": self.model})

    def event(self, kind: str, fields: Mapping[str, Any]) -> None:
        if self._on_event is None:
            return
        now = time.monotonic()
        if kind == "frigate_client" and now - self._last_event < EVENT_GAP_S:
            self._events_held += 1
            return
        if kind == "frigate_client":
            self._last_event = now
            fields = {**fields, "more_clients_not_reported": self._events_held}
            self._events_held = 0
        try:
            self._on_event(kind, fields)
        except Exception:
            log.exception("Frigate endpoint: the event handler failed on %s", kind)
