"""Home Assistant MQTT discovery: the retained configs that make this node's daemon,
devices and models entities in Home Assistant (docs/mqtt.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edgetpud import __version__, payloads
from edgetpud.mqtt.topics import Topics

_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def _slug(text: str) -> str:
    return _SLUG.sub("_", text).strip("_") or "x"


def _entries(section: Any, key: str) -> list[tuple[str, str]]:
    """(name, Jinja expression selecting it) for a health section that is a list or a mapping."""
    if isinstance(section, Mapping):
        return [(str(n), f"value_json.{key}[{str(n)!r}]") for n in section]
    out: list[tuple[str, str]] = []
    if isinstance(section, list):
        ident = "identity" if key == "devices" else "name"
        for item in section:
            if isinstance(item, Mapping) and item.get(ident):
                name = str(item[ident])
                expr = f"(value_json.{key} | selectattr({ident!r}, 'eq', {name!r}) | first)"
                out.append((name, expr))
    return out


def configs(prefix: str, topics: Topics, health: Mapping[str, Any]) -> dict[str, bytes]:
    """Retained Home Assistant discovery configs for this node's devices, models and availability."""
    t = topics
    node = _slug(t.node)
    device = {
        "identifiers": [f"edgetpud_{node}"],
        "name": f"edgetpud {t.node}",
        "manufacturer": "edgetpud",
        "model": "Coral Edge TPU service",
        "sw_version": __version__,
    }
    common = {
        "availability_topic": t.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }
    configs: dict[str, dict[str, Any]] = {}

    def sensor(component: str, object_id: str, name: str, **extra: Any) -> None:
        uid = f"edgetpud_{node}_{object_id}"
        configs[f"{prefix}/{component}/{node}/{object_id}/config"] = {
            "name": name,
            "unique_id": uid,
            "object_id": uid,
            **common,
            **extra,
        }

    sensor(
        "binary_sensor",
        "daemon",
        "edgetpud daemon",
        state_topic=t.status,
        payload_on="online",
        payload_off="offline",
        device_class="connectivity",
    )
    for ident, expr in _entries(health.get("devices"), "devices"):
        obj = _slug(ident)
        sensor(
            "sensor",
            f"{obj}_state",
            f"Edge TPU {ident} state",
            state_topic=t.health,
            value_template=f"{{{{ {expr}.state }}}}",
            icon="mdi:chip",
        )
        sensor(
            "sensor",
            f"{obj}_temperature",
            f"Edge TPU {ident} temperature",
            state_topic=t.health,
            value_template=f"{{{{ {expr}.temperature }}}}",
            device_class="temperature",
            unit_of_measurement="°C",
            state_class="measurement",
        )
    for name, expr in _entries(health.get("models"), "models"):
        obj = f"model_{_slug(name)}"
        sensor(
            "sensor",
            f"{obj}_rate",
            f"Model {name} rate",
            state_topic=t.health,
            value_template=f"{{{{ {expr}.rate }}}}",
            unit_of_measurement="inferences/s",
            state_class="measurement",
            icon="mdi:speedometer",
        )
        sensor(
            "sensor",
            f"{obj}_latency_p50",
            f"Model {name} latency p50",
            state_topic=t.health,
            value_template=f"{{{{ {expr}.p50_ms }}}}",
            unit_of_measurement="ms",
            device_class="duration",
            state_class="measurement",
        )
    return {topic: payloads.to_json(body) for topic, body in configs.items()}
