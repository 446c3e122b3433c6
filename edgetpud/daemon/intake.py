"""Where requests from other threads come in: admission on a published table, then an enqueue.

The supervisor publishes a new table (model → its door and queue) whenever what
admission depends on changes; `submit` runs on the caller's thread (paho's, or a
component's), reads the table it finds (one reference, never half-updated), asks
`policy.admission` and enqueues. It never reads the supervisor's live state and
never blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgetpud.messages import Request
from edgetpud.policy import admission
from edgetpud.workers import ModelQueue


@dataclass(frozen=True)
class Entry:
    door: admission.Door
    queue: ModelQueue


class Intake:
    """`submit(request)` → None (queued) or the refusal the client is told."""

    def __init__(self) -> None:
        self._table: Mapping[str, Entry] = {}

    def publish(self, table: Mapping[str, Entry]) -> None:
        """Supervisor thread: the table from now on (the caller does not change it afterwards)."""
        self._table = table

    def submit(self, request: Request) -> str | None:
        """Any thread: queue `request` or say why not. Never blocks."""
        entry = self._table.get(request.model)
        verdict = admission.decide(
            request.model, entry.door if entry is not None else None, request.source
        )
        if verdict.refusal or entry is None:
            return verdict.refusal
        if verdict.queue == "over_limit":
            entry.queue.put_over_limit(request)
            return None
        if entry.queue.put(request, timeout=0.0):
            return None
        return admission.busy(request.model, entry.door, entry.queue.retry_after_ms())
