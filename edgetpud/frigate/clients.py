"""Who talks to the Frigate endpoint and what became of their requests: the counters
and hand-off times the health section `frigate` shows, per client and in total.

Any thread may count (the endpoint's for what it answers at once, workers' for
results); one lock guards the clients and the totals. The clients are looked up by
connection (routing id) first: only a new connection costs a peer lookup.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

MAX_CLIENTS = 64  # clients remembered for health; the longest idle is forgotten first
LATENCY_WINDOW = 256  # answered requests whose hand-off times health reports
OUTCOMES = ("answered", "empty", "expired")  # what became of each request, per client
TOTALS = (*OUTCOMES, "requests", "mismatched", "malformed")


@dataclass
class ClientStats:
    """One Frigate client: a detector process (ipc: by pid) or a host (tcp: by address)."""

    client: str  # "pid 1234 (uid 0)" over ipc, the peer address over tcp
    connections: int = 0  # distinct sockets seen (Frigate opens a new one after a timeout)
    requests: int = 0  # frames received
    answered: int = 0  # answered with the model's detections
    empty: int = 0  # answered at once with no detections (no device, mismatch, busy, error)
    expired: int = 0  # dropped unanswered: its timeout had passed before a device took it
    mismatched: int = 0  # frames whose shape or type is not the model's input (part of empty)
    detector_model: str = ""  # the model file Frigate's handshake named
    last_empty: str = ""  # why the last empty reply was empty
    first_seen: float = 0.0  # time.time()
    last_seen: float = 0.0  # time.time()


class Ledger:
    """The clients (most recently seen last), the totals and the latency windows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: collections.OrderedDict[str, ClientStats] = collections.OrderedDict()
        self._peers: collections.OrderedDict[bytes, ClientStats] = collections.OrderedDict()
        self.totals = collections.Counter[str]()
        # per answered request, ms, the latest LATENCY_WINDOW: arrival -> a worker took
        # it; result -> reply sent; arrival -> reply sent
        self._queue_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._reply_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._total_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    def client(self, routing_id: bytes, peer: Callable[[], str]) -> tuple[ClientStats, bool]:
        """The client behind a connection, and whether it is new; `peer()` names it."""
        client = self._peers.get(routing_id)
        if client is not None:
            return client, False
        name = peer()
        with self._lock:
            client = self._clients.get(name)
            new = client is None
            if client is None:
                client = ClientStats(name, first_seen=time.time())
                self._clients[name] = client
                while len(self._clients) > MAX_CLIENTS:
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(name)
            client.connections += 1
            self._peers[routing_id] = client
            while len(self._peers) > MAX_CLIENTS * 4:
                self._peers.popitem(last=False)
        return client, new

    # ---- what became of a request -----------------------------------------------------

    def malformed(self) -> None:
        self.totals["malformed"] += 1

    def request(self, client: ClientStats, *, seen: bool = True) -> None:
        """A frame came (`seen`: it also counts as the client's last sign of life)."""
        with self._lock:
            client.requests += 1
            if seen:
                client.last_seen = time.time()
            self.totals["requests"] += 1

    def empty(self, client: ClientStats, why: str) -> None:
        with self._lock:
            client.empty += 1
            self.totals["empty"] += 1
            if why:
                client.last_empty = why

    def mismatch(self, client: ClientStats, why: str) -> None:
        with self._lock:
            client.mismatched += 1
            client.last_empty = why
            self.totals["mismatched"] += 1

    def expired(self, client: ClientStats) -> None:
        with self._lock:
            client.expired += 1
            self.totals["expired"] += 1

    def answered(self, client: ClientStats, queue_ms: float) -> None:
        with self._lock:
            client.answered += 1
            self.totals["answered"] += 1
        self._queue_ms.append(queue_ms)

    def detector_model(self, client: ClientStats, name: str) -> None:
        with self._lock:
            client.detector_model = name

    def sent(self, arrived: float, done: float, now: float) -> None:
        """An answer left at `now` (monotonic) for a request that arrived at `arrived` and
        whose result came at `done`."""
        self._reply_ms.append((now - done) * 1000.0)
        self._total_ms.append((now - arrived) * 1000.0)

    # ---- health -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The totals, the hand-off medians and the clients (most recent first)."""
        with self._lock:
            clients = [asdict(c) for c in reversed(self._clients.values())]
            totals = {k: self.totals[k] for k in TOTALS}
        by_client = {}
        for c in clients:
            c["first_seen"] = round(c["first_seen"], 3)
            c["last_seen"] = round(c["last_seen"], 3)
            by_client[c.pop("client")] = c
        return {
            **totals,
            # p50 over the last LATENCY_WINDOW answered requests, ms: from arrival until a
            # worker took it; from the result until the reply left; arrival to reply
            "queue_p50_ms": _p50(self._queue_ms),
            "reply_p50_ms": _p50(self._reply_ms),
            "in_daemon_p50_ms": _p50(self._total_ms),
            "clients": by_client,
        }


def _p50(values: collections.deque[float]) -> float:
    ordered = sorted(values)  # a copy first: other threads append meanwhile
    return round(ordered[len(ordered) // 2], 3) if ordered else 0.0
