"""`edgetpud status` draws whatever another node retained on its health topic.

Anyone who may publish under the topic prefix can retain a health document, and an
older or newer daemon may send fields of other types. The tables must still draw: a
field of the wrong type shows as text or blank, and never stops the operator's view of
the other nodes.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgetpud.commands.status import render
from tests.support.examples import examples

SECTIONS = ("time", "daemon", "mqtt", "devices", "models", "frigate", "hosts")
KEYS = (
    "version", "uptime_s", "config_generation", "last_reload_error", "config", "backlog",
    "publish_denied", "response_topics_refused", "identity", "kind", "speed_mbps", "verdict",
    "state", "temperature", "models", "reasons", "name", "devices", "tier", "rate", "p50_ms",
    "p99_ms", "queue_depth", "dropped", "errors", "reason", "endpoint", "model", "clients",
    "last_seen", "last_empty", "pid", "restarts", "deaths", "last_exit", "device",
)  # fmt: skip

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
keys = st.sampled_from(KEYS) | st.text(max_size=4)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
health = st.dictionaries(st.sampled_from(SECTIONS), json_values, max_size=len(SECTIONS))


@example({"daemon": {"version": 2, "uptime_s": "long", "config_generation": None}})
@example({"daemon": "up", "mqtt": [1], "devices": {"usb:1": 5}, "models": {"m": {"rate": "1"}}})
@example({"frigate": {"endpoint": "ipc://x", "clients": {"a": {"last_seen": True}}}})
@example({"daemon": {"last_reload_error": ["a", "b"]}, "hosts": [{"device": {"x": 1}}]})
@settings(max_examples=examples(2000))
@given(health)
def test_any_retained_health_draws_as_tables(body: dict[str, Any]) -> None:
    body = json.loads(json.dumps(body))  # what a node can put on the wire: JSON, no NaN keys
    out = render(
        {"odd": body, "good": {"daemon": {"version": "1.0"}}},
        {"odd": "online", "good": "online"},
        now=1000.0,
        fleet=True,
    )
    assert "good" in out and "1.0" in out
