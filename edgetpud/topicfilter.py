"""MQTT topic filters: matching a topic, and checking a filter is valid (no paho here;
config.py checks `mqtt.response_topics` with it, mqtt/replies.py matches with it)."""

from __future__ import annotations

MAX_TOPIC_BYTES = 1024  # the longest response topic edgetpud publishes to


def filter_matches(pattern: str, topic: str) -> bool:
    """MQTT topic-filter matching: `+` is one level, a final `#` any number (even none)."""
    levels = topic.split("/")
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels):
            return False
        if part != "+" and part != levels[i]:
            return False
    return len(parts) == len(levels)


def check_filter(value: str) -> str | None:
    """Problem text if `value` is not a valid MQTT topic filter, else None."""
    if not value or "\0" in value or len(value.encode()) > MAX_TOPIC_BYTES:
        return f"{value[:60]!r} is not a topic filter (1-{MAX_TOPIC_BYTES} bytes, no NUL)"
    parts = value.split("/")
    for i, part in enumerate(parts):
        if ("#" in part and (part != "#" or i != len(parts) - 1)) or ("+" in part and part != "+"):
            return (
                f"{value!r} is not a valid MQTT topic filter: '+' must be a whole level and '#' "
                "the whole last level (e.g. replies/+ or clients/#)"
            )
    return None
