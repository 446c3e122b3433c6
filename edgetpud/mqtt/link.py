"""`MqttLink`: the daemon's one MQTT link, wiring the parts of this package together.

Results, health, events and availability out; requests in. Publishing never blocks
the caller: `publish_result` / `publish_event` encode the payload and append it to
one ordered outbox (outbox.py) that the transport drains while connected. While the
broker is away the outbox is the backlog: bounded by `mqtt.backlog_limit`, oldest
dropped (and counted) beyond it, delivered in order after reconnect. The outbox
belongs to whoever passes it in: a reload that replaces the link passes the old
link's `.outbox` to the new one and loses nothing. Contract and payloads: docs/mqtt.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgetpud import payloads
from edgetpud.config import MqttConfig
from edgetpud.messages import Request, Result
from edgetpud.mqtt import discovery, transport
from edgetpud.mqtt.fleet import Fleet
from edgetpud.mqtt.outbox import Out, Outbox
from edgetpud.mqtt.protocol import ModelInputs, RequestDesk, Served
from edgetpud.mqtt.replies import ReplyRule
from edgetpud.mqtt.topics import Incoming, Topics


@dataclass(frozen=True)
class MqttStats:
    connected: bool
    backlog: int
    backlog_dropped: int
    published: int
    requests_accepted: int
    requests_rejected: dict[str, int] = field(default_factory=dict)
    connects: int = 0
    response_topics_refused: dict[str, int] = field(default_factory=dict)
    publish_denied: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "backlog": self.backlog,
            "backlog_dropped": self.backlog_dropped,
            "published": self.published,
            "requests_accepted": self.requests_accepted,
            "requests_rejected": dict(self.requests_rejected),
            "connects": self.connects,
            "response_topics_refused": dict(self.response_topics_refused),
            "publish_denied": dict(self.publish_denied),
        }


class MqttLink:
    """One connection to the broker for the whole daemon (see the module docstring)."""

    def __init__(
        self,
        cfg: MqttConfig,
        node_id: str,
        *,
        on_request: Callable[[Request], str | None],
        on_connection: Callable[[bool], None] | None = None,
        fleet_group: str = "",
        client_id: str = "",
        max_pixels: int | None = None,
        max_decode_bytes: int = payloads.DEFAULT_MAX_DECODE_BYTES,
        outbox: Outbox | None = None,
    ) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.topics = Topics(cfg.topic_prefix, node_id, fleet_group)
        self.outbox = outbox if outbox is not None else Outbox()
        self._health: bytes | None = None  # the last snapshot, sent again on connect
        self._discovery = (
            discovery.Discovery(cfg.homeassistant_prefix, self.topics)
            if cfg.homeassistant
            else None
        )
        self._transport = transport.Transport(
            cfg,
            self.topics,
            self.outbox,
            client_id=client_id or cfg.client_id or f"edgetpud-{node_id}",
            on_message=self._on_message,
            on_up=self._on_up,
            on_connection=on_connection,
        )
        self._send = self._transport.window.enqueue
        self._desk = RequestDesk(
            self.topics,
            send=self._send,
            on_request=on_request,
            qos=cfg.qos,
            max_request_bytes=cfg.max_request_bytes,
            max_pixels=max_pixels,
            max_decode_bytes=max_decode_bytes,
            reply_props=transport.reply_properties if cfg.protocol == "5" else None,
            rule=ReplyRule(cfg.topic_prefix, cfg.homeassistant_prefix, cfg.response_topics),
        )
        self._fleet = Fleet(self.topics, self._transport, self._served_names)

    def _served_names(self) -> list[str]:
        return list(self._desk.served.sizes)

    @property
    def broker(self) -> str:
        return self._transport.broker

    @property
    def _client(self) -> Any:
        """paho's client (tests reach into it to break the link at a chosen moment)."""
        return self._transport.client

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect in the background (never blocks on the broker); reconnects with 1-30 s backoff."""
        self._transport.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush the backlog (up to `timeout`), publish retained offline, disconnect. Idempotent.

        What is not delivered stays in `.outbox` for a link that replaces this one."""
        self._transport.stop(timeout)

    # ----------------------------------------------------------------- what the service calls

    def set_models(
        self,
        models: Mapping[str, ModelInputs | None],
        unavailable: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """Take MQTT requests for exactly these models; others get an error reply.

        `unavailable` names configured models that cannot take MQTT requests, with the
        (reason, message) their requests are refused with; any other model is
        `unknown_model`.

        The node's `.../models/+/infer` is one wildcard subscription; fleet topics are
        subscribed per model, so this subscribes/unsubscribes the difference.
        """
        served = Served.of(models, unavailable)
        old = set(self._desk.served.sizes)
        self._desk.served = served
        self._fleet.models_changed(old, set(served.sizes))

    def pause_fleet(self, model: str) -> bool:
        """Stop taking fleet requests for `model` (back-pressure); False if no other node
        of the group would take them (see Fleet.pause)."""
        return self._fleet.pause(model)

    def resume_fleet(self, model: str) -> None:
        self._fleet.resume(model)

    def fleet_paused(self, model: str) -> bool:
        """Whether this node has stopped taking fleet requests for `model`."""
        return self._fleet.is_paused(model)

    def fleet_peers(self) -> dict[str, dict[str, Any]]:
        """The other nodes of the group as last seen: online, models served, models paused."""
        return self._fleet.peers()

    def publish_result(self, result: Result) -> None:
        """Queue one result: to the request's reply topic, else the results topic.

        Never blocks while the broker is unreachable (the backlog keeps them). While it is
        connected but takes results more slowly than they come (WINDOW waiting on top of
        WINDOW unacknowledged), the caller, a worker's thread, waits up to ROOM_WAIT_S for
        room: that slows the workers down to the broker's pace instead of dropping
        results that could be delivered."""
        data = payloads.to_json(payloads.result_payload(result, self.node_id))
        self._desk.reply(result.request.model, result.request.reply_to, data, wait=True)

    def publish_event(self, event: Mapping[str, Any]) -> None:
        """Queue one event for `.../events` (schema edgetpud.event/1 added if absent)."""
        data = payloads.to_json(payloads.event_payload(event, self.node_id))
        self._send(Out(self.topics.events, data, self.cfg.qos, False, None), False)

    def publish_health(self, snapshot: Mapping[str, Any]) -> None:
        """Publish the retained health snapshot (QoS 1); kept and sent on reconnect if offline."""
        body = dict(snapshot)
        body.setdefault("schema", payloads.HEALTH_SCHEMA)
        body.setdefault("node", self.node_id)
        body.setdefault("time", time.time())
        body.setdefault("mqtt", self.stats().as_dict())
        data = payloads.to_json(body)
        self._health = data
        connected = self._transport.connected
        if self._discovery is not None:
            self._publish(self._discovery.update(body, connected))
        if connected:
            self._transport.publish_retained(self.topics.health, data)

    def _publish(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            self._transport.publish_retained(topic, payload)

    def stats(self) -> MqttStats:
        accepted, rejected = self._desk.counts()
        window = self._transport.window
        with self.outbox.lock:
            return MqttStats(
                connected=window.connected,
                backlog=len(self.outbox) + window.in_paho(),
                backlog_dropped=self.outbox.dropped,
                published=window.published,
                requests_accepted=accepted,
                requests_rejected=rejected,
                connects=self._transport.connects,
                response_topics_refused=self._desk.refused_topics(),
                publish_denied=dict(window.denials.counts),
            )

    # ----------------------------------------------------------------- paho's thread

    def _on_message(self, msg: Incoming) -> None:
        if self._discovery is not None and self._discovery.wants(msg.topic):
            self._publish(self._discovery.take(msg))
            return
        peer = self.topics.peer_of(msg.topic) if self.topics.fleet_group else None
        if peer is not None:
            self._fleet.take_peer(peer[0], peer[1], msg.payload)
        else:
            self._desk.take(msg)

    def _on_up(self) -> None:
        """Connected: the fleet's subscriptions, then discovery and health as last known."""
        self._fleet.came_up()
        if self._discovery is not None:
            self._transport.subscribe(self._discovery.subscriptions)
            self._publish(self._discovery.everything())
        health = self._health
        if health is not None:
            self._transport.publish_retained(self.topics.health, health)
