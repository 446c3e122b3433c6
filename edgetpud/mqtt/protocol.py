"""Requests in, replies out: which model a request is for, whether it is taken, where
the answer goes. No paho here; runs on paho's thread for every request and never blocks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgetpud import payloads
from edgetpud.messages import ReplyTo, Request
from edgetpud.mqtt import replies
from edgetpud.mqtt.outbox import Out
from edgetpud.mqtt.replies import ReplyRule
from edgetpud.mqtt.topics import Incoming, Topics

log = logging.getLogger(__name__)


class _Spec(Protocol):
    @property
    def nbytes(self) -> int: ...


class ModelInputs(Protocol):
    """What the link needs of `edgetpud.modelfile.ModelInfo`: the input tensors' sizes."""

    @property
    def inputs(self) -> Sequence[_Spec]: ...


@dataclass(frozen=True)
class Served:
    """The models this node takes requests for, replaced whole by `set_models`."""

    sizes: Mapping[str, int | None] = field(default_factory=dict)  # input bytes, if known
    descs: Mapping[str, str] = field(default_factory=dict)  # "1x224x224x3 uint8"
    unavailable: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # (reason, text)

    @classmethod
    def of(
        cls,
        models: Mapping[str, ModelInputs | None],
        unavailable: Mapping[str, tuple[str, str]] | None,
    ) -> Served:
        sizes: dict[str, int | None] = {}
        descs: dict[str, str] = {}
        for name, info in models.items():
            spec = info.inputs[0] if info is not None and info.inputs else None
            sizes[name] = spec.nbytes if spec is not None else None
            if spec is not None:
                shape = getattr(spec, "shape", ())
                dtype = getattr(spec, "dtype", "")
                descs[name] = "x".join(str(d) for d in shape) + (f" {dtype}" if dtype else "")
        return cls(sizes, descs, dict(unavailable or {}))


class RequestDesk:
    """Reads requests, refuses what cannot be served (with a reply saying why), hands
    the rest to the service, and routes replies: the request's response topic, else the
    model's results topic."""

    def __init__(
        self,
        topics: Topics,
        *,
        send: Callable[[Out, bool], None],
        on_request: Callable[[Request], str | None],
        qos: int,
        max_request_bytes: int,
        max_pixels: int | None = None,
        max_decode_bytes: int = payloads.DEFAULT_MAX_DECODE_BYTES,
        reply_props: Callable[[str, bytes | None], Any] | None,
        rule: ReplyRule | None = None,
    ) -> None:
        self.topics = topics
        self.node_id = topics.node
        self.served = Served()
        self._send = send
        self._on_request = on_request
        self._qos = qos
        self._max_request_bytes = max_request_bytes
        self._max_pixels = max_pixels
        self._max_decode_bytes = max_decode_bytes
        self._reply_props = reply_props  # None at MQTT 3.1.1: no properties
        self.rule = rule or ReplyRule(topics.prefix, "homeassistant")
        self._lock = threading.Lock()
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.topics_refused: dict[str, int] = {}  # response topics refused, per class

    def counts(self) -> tuple[int, dict[str, int]]:
        with self._lock:
            return self.accepted, dict(self.rejected)

    def refused_topics(self) -> dict[str, int]:
        with self._lock:
            return dict(self.topics_refused)

    def take(self, msg: Incoming) -> None:
        """One message on an infer topic (paho's thread)."""
        model = self.topics.model_of(msg.topic)
        if model is None:
            log.debug("MQTT: ignoring message on %s", msg.topic)
            return
        request_id = replies.request_id(msg.correlation, msg.user_props)
        if msg.response_topic is not None:
            refused = self.rule.refusal(msg.response_topic)
            if refused is not None:  # before any work, and never answered there
                self._refuse_topic(model, request_id, *refused)
                return
        reply_to = ReplyTo(msg.response_topic, msg.correlation) if msg.response_topic else None
        try:
            request = self._read(model, msg, request_id, reply_to)
        except payloads.BadRequest as exc:
            self.refuse(model, reply_to, request_id, exc.reason, str(exc))
            return
        try:
            answer = self._on_request(request)
        except Exception as exc:
            log.exception("MQTT: the service failed to take request %s for %s", request_id, model)
            answer = f"internal: the daemon could not queue the request ({exc}); see its log"
        if answer:
            reason, message = payloads.split_reason(answer)
            self.refuse(model, reply_to, request_id, reason, message)
            return
        with self._lock:
            self.accepted += 1

    def _read(
        self, model: str, msg: Incoming, request_id: str, reply_to: ReplyTo | None
    ) -> Request:
        """The request, or BadRequest saying why it cannot be served."""
        served = self.served
        if model not in served.sizes:
            unavailable = served.unavailable.get(model)
            if unavailable is not None:
                raise payloads.BadRequest(*unavailable)
            raise payloads.BadRequest(
                payloads.UNKNOWN_MODEL,
                f"model {model!r} is not served by {self.node_id}; see the health topic "
                f"{self.topics.health} for the models it runs",
            )
        decoded = payloads.decode_request(
            model,
            msg.payload,
            input_nbytes=served.sizes[model],
            input_desc=served.descs.get(model, ""),
            content_type=msg.content_type,
            max_bytes=self._max_request_bytes,
            max_pixels=self._max_pixels,
            max_decode_bytes=self._max_decode_bytes,
        )
        meta: dict[str, Any] = {"topic": msg.topic}
        if decoded.kind == "image":
            meta.update(format=decoded.format, width=decoded.width, height=decoded.height)
        fleet = not msg.topic.startswith(self.topics.base + "/")
        return Request(
            model=model,
            payload=decoded.payload,
            kind=decoded.kind,
            id=request_id,
            source="mqtt-fleet" if fleet else "mqtt",
            reply_to=reply_to,
            meta=meta,
        )

    def _refuse_topic(self, model: str, request_id: str, klass: str, text: str) -> None:
        """A response topic the rule refuses (replies.py): answered on the results topic,
        counted per class, logged at warning once per class (a flood logs one line)."""
        with self._lock:
            first = klass not in self.topics_refused
            self.topics_refused[klass] = self.topics_refused.get(klass, 0) + 1
        if first:
            log.warning(
                "MQTT: refused a request for model %s (%s): %s; further refusals of this kind "
                "are counted in health (mqtt.response_topics_refused.%s), not logged",
                model,
                request_id,
                text,
                klass,
            )
        self.refuse(model, None, request_id, replies.BAD_RESPONSE_TOPIC, text, quiet=True)

    def refuse(
        self,
        model: str,
        reply_to: ReplyTo | None,
        request_id: str,
        reason: str,
        text: str,
        *,
        quiet: bool = False,
    ) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if quiet:
            log.debug("MQTT: refused request %s for model %s: %s", request_id, model, text)
        else:
            log.info("MQTT: refused request %s for model %s: %s", request_id, model, text)
        body = payloads.error_payload(model, reason, text, node=self.node_id, request_id=request_id)
        self.reply(model, reply_to, payloads.to_json(body))

    def reply(
        self, model: str, reply_to: ReplyTo | None, data: bytes, *, wait: bool = False
    ) -> None:
        """An answer to the request's response topic, else to the model's results topic."""
        if reply_to is not None and reply_to.topic:
            props = None
            if self._reply_props is not None:
                props = self._reply_props("application/json", reply_to.correlation)
            self._send(Out(reply_to.topic, data, self._qos, False, props), wait)
        else:
            self._send(Out(self.topics.results(model), data, self._qos, False, None), wait)
