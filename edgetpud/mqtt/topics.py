"""The topics of one node and of its fleet, and what arrives on them (no paho here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

ONLINE = b"online"
OFFLINE = b"offline"


class Incoming(NamedTuple):
    """A message from the broker, as the transport hands it on (paho's object is not kept)."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    content_type: str | None = None
    user_props: Any = None  # [(key, value), ...] of MQTT 5, or None
    retain: bool = False  # a retained message the broker replays on subscribing


@dataclass(frozen=True)
class Topics:
    """Every topic of one node: `<prefix>/<node>/...`, plus the fleet topics under `<prefix>/fleet`."""

    prefix: str
    node: str
    fleet_group: str = ""

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    def results(self, model: str) -> str:
        return f"{self.base}/models/{model}/results"

    def infer(self, model: str) -> str:
        return f"{self.base}/models/{model}/infer"

    def fleet_infer(self, model: str) -> str:
        """Where clients send fleet requests; any node serving `model` in the group takes each one."""
        return f"{self.prefix}/fleet/models/{model}/infer"

    def fleet_subscription(self, model: str) -> str:
        return f"$share/{self.fleet_group}/{self.fleet_infer(model)}"

    @property
    def fleet_state(self) -> str:
        """Retained `edgetpud.fleet/1`: the models this node serves and those it has paused."""
        return f"{self.base}/fleet"

    def peer_of(self, topic: str) -> tuple[str, str] | None:
        """(node, "status" | "fleet") for another node's status or fleet-state topic, else None."""
        head = f"{self.prefix}/"  # the prefix may have several levels ("site/edgetpud")
        if not topic.startswith(head):
            return None
        node, _, leaf = topic[len(head) :].partition("/")
        if leaf not in ("status", "fleet") or node in ("", self.node):
            return None
        return node, leaf

    def kind_of(self, topic: str, discovery_prefix: str = "homeassistant") -> str:
        """What an outgoing topic is, for counting: results, replies (a response topic),
        discovery, health, status, events, fleet."""
        if topic in (self.health, self.status, self.events, self.fleet_state):
            return topic.rsplit("/", 1)[1]
        if topic.startswith(f"{self.base}/models/") and topic.endswith("/results"):
            return "results"
        if topic.startswith(discovery_prefix + "/"):
            return "discovery"
        return "replies"

    def model_of(self, topic: str) -> str | None:
        """The model named by an infer topic of this node or of the fleet, else None."""
        for head in (f"{self.base}/models/", f"{self.prefix}/fleet/models/"):
            if topic.startswith(head) and topic.endswith("/infer"):
                model = topic[len(head) : -len("/infer")]
                return model if model and "/" not in model else None
        return None
