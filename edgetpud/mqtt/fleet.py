"""The fleet: shared-subscription requests any node of a group can take, back-pressure
(pausing a model's fleet subscription) and what this node knows of its peers.
No paho here: it subscribes and publishes through the transport.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from edgetpud import payloads
from edgetpud.mqtt.topics import ONLINE, Topics

log = logging.getLogger(__name__)


class Wire(Protocol):
    """What the fleet needs of the transport."""

    @property
    def connected(self) -> bool: ...

    def subscribe(self, topics: list[str]) -> None: ...

    def unsubscribe(self, topics: list[str]) -> None: ...

    def publish_retained(self, topic: str, payload: bytes) -> None: ...


@dataclass
class _Peer:
    """Another node of the fleet, as its retained status and fleet state tell."""

    online: bool = False
    group: str = ""
    models: frozenset[str] = frozenset()
    paused: frozenset[str] = frozenset()


class Fleet:
    """Fleet subscriptions and state of one node; inert when it has no fleet group."""

    def __init__(self, topics: Topics, wire: Wire, served: Callable[[], Iterable[str]]) -> None:
        self.topics = topics
        self.group = topics.fleet_group
        self._wire = wire
        self._served = served  # the models this node serves now
        self._lock = threading.Lock()
        self._paused: set[str] = set()
        self._peers: dict[str, _Peer] = {}

    def came_up(self) -> None:
        """Connected: subscribe to the fleet's requests and peers, publish this node's state."""
        if not self.group:
            return
        self._subscribe(sorted(self._served()))
        prefix = self.topics.prefix
        self._wire.subscribe([f"{prefix}/+/status", f"{prefix}/+/fleet"])
        self.publish_state()

    def models_changed(self, old: set[str], new: set[str]) -> None:
        """The served models changed: (un)subscribe the difference (while connected)."""
        if not self.group or not self._wire.connected:
            return
        self._wire.unsubscribe([self.topics.fleet_subscription(m) for m in sorted(old - new)])
        self._subscribe(sorted(new - old))
        self.publish_state()

    def _subscribe(self, models: list[str]) -> None:
        """Fleet subscriptions, one per model (the node's own infer topic is one wildcard)."""
        with self._lock:
            paused = set(self._paused)
        self._wire.subscribe([self.topics.fleet_subscription(m) for m in models if m not in paused])

    def pause(self, model: str) -> bool:
        """Stop taking fleet requests for `model` (back-pressure); its node topic stays subscribed.

        Refused (False) while no other online node of the group serves `model` unpaused:
        with every member unsubscribed the broker would discard new fleet requests
        ("no matching subscribers"), so the last one with the topic keeps taking them.
        """
        if not self.group:
            return False
        with self._lock:
            if model in self._paused:
                return True
            if not self._peer_has_room(model):
                return False
            self._paused.add(model)
        if self._wire.connected and model in set(self._served()):
            self._wire.unsubscribe([self.topics.fleet_subscription(model)])
            self.publish_state()
        return True

    def resume(self, model: str) -> None:
        if not self.group:
            return
        with self._lock:
            if model not in self._paused:
                return
            self._paused.discard(model)
        if self._wire.connected and model in set(self._served()):
            self._wire.subscribe([self.topics.fleet_subscription(model)])
            self.publish_state()

    def is_paused(self, model: str) -> bool:
        with self._lock:
            return model in self._paused

    def peers(self) -> dict[str, dict[str, Any]]:
        """The other nodes of the group as last seen: online, models served, models paused."""
        with self._lock:
            return {
                name: {"online": p.online, "models": sorted(p.models), "paused": sorted(p.paused)}
                for name, p in self._peers.items()
                if p.group == self.group
            }

    def _peer_has_room(self, model: str) -> bool:
        """Another online node of our group serves `model` and takes fleet requests (lock held)."""
        return any(
            p.online and p.group == self.group and model in p.models and model not in p.paused
            for p in self._peers.values()
        )

    def publish_state(self) -> None:
        with self._lock:
            paused = sorted(self._paused)
        body = {
            "schema": "edgetpud.fleet/1",
            "node": self.topics.node,
            "group": self.group,
            "models": sorted(self._served()),
            "paused": paused,
            "time": time.time(),
        }
        if self._wire.connected:
            self._wire.publish_retained(self.topics.fleet_state, payloads.to_json(body))

    def take_peer(self, node: str, leaf: str, payload: bytes) -> None:
        """Another node's status or fleet state changed; a paused model with no one else to
        take its requests resumes at once (e.g. the other node died or paused too)."""
        with self._lock:
            peer = self._peers.setdefault(node, _Peer())
            if leaf == "status":
                peer.online = payload == ONLINE
            else:
                try:
                    body = json.loads(payload) if payload else {}
                except ValueError:
                    body = {}
                body = body if isinstance(body, dict) else {}
                peer.group = str(body.get("group", ""))
                peer.models = frozenset(map(str, body.get("models") or ()))
                peer.paused = frozenset(map(str, body.get("paused") or ()))
            stranded = sorted(m for m in self._paused if not self._peer_has_room(m))
        for model in stranded:
            log.info(
                "model %s: no other node of fleet group %s takes its requests now; "
                "taking fleet requests again",
                model,
                self.group,
            )
            self.resume(model)
