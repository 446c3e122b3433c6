"""Which MQTT 5 response topics the daemon will publish a reply to, and what a request
may make it say about itself (its request id). No paho here.

A requester names the response topic; the daemon publishes there with its own
credentials. So a response topic is refused, before any work is done, when it is:

| class | rule |
|---|---|
| `empty` | the empty string (not a topic name) |
| `invalid` | holds U+0000, or is over MAX_TOPIC_BYTES (1,024) bytes of UTF-8 |
| `wildcard` | holds `+` or `#` (a filter, not a topic: PUBLISH to it is a protocol error) |
| `system` | starts with `$` (`$SYS/...`, `$share/...`: the broker's own) |
| `own` | is or is under `<topic_prefix>/`: this daemon's status, health, events, results, requests, and those of every other node and the fleet |
| `discovery` | is or is under `<homeassistant_prefix>/`: Home Assistant's config topics |
| `not_allowed` | `mqtt.response_topics` is set and none of its filters matches |

The refusal is an `edgetpud.error/1` reply with reason `bad_response_topic` on the
model's results topic (never on the refused topic), counted per class in health
(`mqtt.response_topics_refused`), and logged once per class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgetpud.messages import new_request_id
from edgetpud.topicfilter import MAX_TOPIC_BYTES, filter_matches

BAD_RESPONSE_TOPIC = "bad_response_topic"
MAX_REQUEST_ID_CHARS = 128  # longer ids are cut: HEAD characters, "...", a digest
_ID_HEAD = 64
CLASSES = ("empty", "invalid", "wildcard", "system", "own", "discovery", "not_allowed")


@dataclass(frozen=True)
class ReplyRule:
    """The rule above for one node: its topic prefix, Home Assistant's discovery prefix
    and the optional allow-list of filters (`mqtt.response_topics`)."""

    prefix: str
    discovery_prefix: str
    allowed: tuple[str, ...] = ()

    def refusal(self, topic: str) -> tuple[str, str] | None:
        """(class, sentence) when replies may not go to `topic`, else None."""
        klass = self._class(topic)
        if klass is None:
            return None
        return klass, self._sentence(klass, topic)

    def _class(self, topic: str) -> str | None:
        if topic == "":
            return "empty"
        if "\0" in topic or len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
            return "invalid"
        if "+" in topic or "#" in topic:
            return "wildcard"
        if topic.startswith("$"):
            return "system"
        if _under(topic, self.prefix):
            return "own"
        if _under(topic, self.discovery_prefix):
            return "discovery"
        if self.allowed and not any(filter_matches(f, topic) for f in self.allowed):
            return "not_allowed"
        return None

    def _sentence(self, klass: str, topic: str) -> str:
        shown = _show(topic)
        fix = "; name a topic of your own, e.g. replies/<client id>, as the response topic"
        why = {
            "empty": "the response topic is empty",
            "invalid": f"the response topic {shown} is not a topic name (a NUL character, or "
            f"over {MAX_TOPIC_BYTES} bytes)",
            "wildcard": f"the response topic {shown} holds a wildcard (+ or #); replies go to "
            "one topic, not a filter",
            "system": f"the response topic {shown} starts with $, which is the broker's",
            "own": f"the response topic {shown} is under {self.prefix}/, where edgetpud "
            "publishes its own status, health, events and results",
            "discovery": f"the response topic {shown} is under {self.discovery_prefix}/, "
            "Home Assistant's discovery prefix",
            "not_allowed": f"the response topic {shown} matches none of mqtt.response_topics "
            f"({', '.join(self.allowed)})",
        }[klass]
        if klass == "not_allowed":
            return why + "; use a topic those filters allow"
        return why + fix


def _under(topic: str, prefix: str) -> bool:
    return bool(prefix) and (topic == prefix or topic.startswith(prefix + "/"))


def _show(topic: str) -> str:
    text = topic if len(topic) <= 80 else topic[:60] + f"... ({len(topic):,} characters)"
    return repr(text)


def rule_of(prefix: str, discovery_prefix: str, allowed: Sequence[str]) -> ReplyRule:
    return ReplyRule(prefix, discovery_prefix, tuple(allowed))


def request_id(correlation: Any, user_props: Any) -> str:
    """The id a request's replies and log lines carry: its correlation data (as text when
    printable UTF-8, else hex), else a `request_id` user property, else a new id. At most
    MAX_REQUEST_ID_CHARS characters: a longer one keeps its first 64 characters, then
    "...", then 16 hex digits of the SHA-256 of the whole (distinct ids stay distinct).
    The reply's correlation data property always carries the full bytes, so a requester
    matching on it is answered whatever its length."""
    if isinstance(correlation, (bytes, bytearray)) and correlation:
        data = bytes(correlation)
        try:
            text = data.decode()
            if not text.isprintable():
                text = data.hex()
        except UnicodeDecodeError:
            text = data.hex()
        return _bounded(text, data)
    for key, value in user_props or ():
        if key == "request_id" and value:
            text = str(value)
            return _bounded(text, text.encode("utf-8", "surrogatepass"))
    return new_request_id()


def _bounded(text: str, data: bytes) -> str:
    if len(text) <= MAX_REQUEST_ID_CHARS:
        return text
    return f"{text[:_ID_HEAD]}...{hashlib.sha256(data).hexdigest()[:16]}"
