"""`edgetpud status` says when the broker refused the daemon's publishes (its ACL) and
when requests were refused for their response topic, from the node's health."""

from __future__ import annotations

from typing import Any

from edgetpud.commands.status import render


def health(mqtt: dict[str, Any]) -> dict[str, Any]:
    return {
        "time": 1000.0,
        "daemon": {"version": "0.1.0", "uptime_s": 30, "config_generation": 1},
        "models": {},
        "mqtt": {"backlog": 0, **mqtt},
    }


def test_broker_denials_and_refused_response_topics_are_shown_with_the_fix() -> None:
    out = render(
        {
            "box": health(
                {
                    "publish_denied": {"replies": 3, "discovery": 12},
                    "response_topics_refused": {"own": 2},
                }
            )
        },
        {"box": "online"},
        now=1001.0,
    )
    assert (
        "box: the broker refused publishes (12 discovery, 3 replies); let the daemon's MQTT "
        'user write those topics in the broker\'s ACL (docs/mqtt.md, "Broker ACL")'
    ) in out
    assert "box: requests refused for their response topic (2 own)" in out


def test_nothing_is_said_when_nothing_was_refused() -> None:
    out = render(
        {"box": health({"publish_denied": {}, "response_topics_refused": {}})},
        {"box": "online"},
        now=1001.0,
    )
    assert "refused" not in out
