"""Home Assistant MQTT discovery, device based (docs/mqtt.md, "Home Assistant discovery").

One retained config per Home Assistant device at `<prefix>/device/<object id>/config`,
each with `device`, `origin` and `components`: the node itself (the daemon's
availability), one per Edge TPU (its state, and its temperature when it has a sensor:
PCIe modules do, USB Accelerators never report one) and one per model (rate, latency).
What goes away (a model removed from the config, a device unplugged) gets the empty
retained payload, which makes Home Assistant delete it; so does a retained config of
ours that the broker still holds from before a restart but that no longer matches
anything. A clean stop deletes nothing: availability goes `offline`. Configs of the
per-entity scheme of edgetpud 0.1 (`<prefix>/<component>/<node>/<object>/config`) are
cleared when seen, once; their entities come back under the same entity ids.

No paho here; `Discovery` says what to publish, the link publishes it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from edgetpud import __version__, payloads
from edgetpud.mqtt.topics import Incoming, Topics

_TOPIC_SLUG = re.compile(r"[^A-Za-z0-9_-]+")  # what a discovery topic level may hold
_ENTITY_SLUG = re.compile(r"[^a-z0-9_]+")  # what an entity id may hold
ORIGIN = {"name": "edgetpud", "sw_version": __version__}


def _slug(text: str) -> str:
    return _TOPIC_SLUG.sub("_", text).strip("_") or "x"


def _entity(text: str) -> str:
    return _ENTITY_SLUG.sub("_", text.lower()).strip("_") or "x"


def _entries(section: Any, key: str) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(name, Jinja expression selecting it, entry) for a health section, list or mapping."""
    if isinstance(section, Mapping):
        return [
            (str(n), f"value_json.{key}[{str(n)!r}]", v if isinstance(v, Mapping) else {})
            for n, v in section.items()
        ]
    out: list[tuple[str, str, Mapping[str, Any]]] = []
    if isinstance(section, list):
        ident = "identity" if key == "devices" else "name"
        for item in section:
            if isinstance(item, Mapping) and item.get(ident):
                name = str(item[ident])
                expr = f"(value_json.{key} | selectattr({ident!r}, 'eq', {name!r}) | first)"
                out.append((name, expr, item))
    return out


def has_temperature(device: Mapping[str, Any]) -> bool:
    """Whether a device from health has a temperature sensor: a PCIe module's driver
    exposes one (even while a reading fails); a USB Accelerator never reports one."""
    return device.get("kind") == "pci" or device.get("temperature") is not None


class _Builder:
    """The device configs for one health snapshot."""

    def __init__(self, topics: Topics, prefix: str) -> None:
        self.t = topics
        self.prefix = prefix
        self.node = _slug(topics.node)
        self.node_id = f"edgetpud_{self.node}"
        self.configs: dict[str, dict[str, Any]] = {}

    def device(
        self, object_id: str, device: dict[str, Any], components: dict[str, dict[str, Any]]
    ) -> None:
        """One device config; each component's `platform` is its entity's domain."""
        for cid, comp in components.items():
            uid = f"{self.node_id}_{cid}"
            comp.setdefault("unique_id", uid)
            comp.setdefault("default_entity_id", f"{comp['platform']}.{_entity(uid)}")
            comp.setdefault("state_topic", self.t.health)
        self.configs[f"{self.prefix}/device/{object_id}/config"] = {
            "device": device,
            "origin": ORIGIN,
            "availability_topic": self.t.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "components": components,
        }

    def node_device(self) -> None:
        self.device(
            self.node_id,
            {
                "identifiers": [self.node_id],
                "name": f"edgetpud {self.t.node}",
                "manufacturer": "edgetpud",
                "model": "Coral Edge TPU service",
                "sw_version": __version__,
            },
            {
                "daemon": {
                    "platform": "binary_sensor",
                    "name": "Daemon",
                    "state_topic": self.t.status,
                    "payload_on": "online",
                    "payload_off": "offline",
                    "device_class": "connectivity",
                }
            },
        )

    def edge_tpu(self, ident: str, expr: str, entry: Mapping[str, Any]) -> None:
        obj = _slug(ident)
        kind = entry.get("kind")
        components: dict[str, dict[str, Any]] = {
            f"{obj}_state": {
                "platform": "sensor",
                "name": "State",
                "value_template": f"{{{{ {expr}.state }}}}",
                "icon": "mdi:chip",
            }
        }
        if has_temperature(entry):
            components[f"{obj}_temperature"] = {
                "platform": "sensor",
                "name": "Temperature",
                "value_template": f"{{{{ {expr}.temperature }}}}",
                "device_class": "temperature",
                "unit_of_measurement": "°C",
                "state_class": "measurement",
            }
        self.device(
            f"{self.node_id}_{obj}",
            {
                "identifiers": [f"{self.node_id}_{obj}"],
                "name": f"Edge TPU {ident}",
                "manufacturer": "Google Coral",
                "model": {"usb": "USB Accelerator", "pci": "M.2 / PCIe module"}.get(
                    str(kind), "Edge TPU"
                ),
                "via_device": self.node_id,
            },
            components,
        )

    def model(self, name: str, expr: str) -> None:
        obj = f"model_{_slug(name)}"
        self.device(
            f"{self.node_id}_{obj}",
            {
                "identifiers": [f"{self.node_id}_{obj}"],
                "name": f"Model {name} on {self.t.node}",
                "manufacturer": "edgetpud",
                "model": "TFLite model",
                "via_device": self.node_id,
            },
            {
                f"{obj}_rate": {
                    "platform": "sensor",
                    "name": "Rate",
                    "value_template": f"{{{{ {expr}.rate }}}}",
                    "unit_of_measurement": "inferences/s",
                    "state_class": "measurement",
                    "icon": "mdi:speedometer",
                },
                f"{obj}_latency_p50": {
                    "platform": "sensor",
                    "name": "Latency p50",
                    "value_template": f"{{{{ {expr}.p50_ms }}}}",
                    "unit_of_measurement": "ms",
                    "device_class": "duration",
                    "state_class": "measurement",
                },
            },
        )


def configs(prefix: str, topics: Topics, health: Mapping[str, Any]) -> dict[str, bytes]:
    """The retained device configs for one health snapshot: topic -> JSON."""
    b = _Builder(topics, prefix)
    b.node_device()
    for ident, expr, entry in _entries(health.get("devices"), "devices"):
        b.edge_tpu(ident, expr, entry)
    for name, expr, _ in _entries(health.get("models"), "models"):
        b.model(name, expr)
    return {topic: payloads.to_json(body) for topic, body in b.configs.items()}


class Discovery:
    """What Home Assistant has been told, and what to tell it next.

    Each method returns the (topic, payload) pairs to publish, retained, now; an empty
    payload deletes. `update` runs on the health thread, the others on paho's thread.
    """

    def __init__(self, prefix: str, topics: Topics) -> None:
        self.prefix = prefix
        self.topics = topics
        self.node_id = f"edgetpud_{_slug(topics.node)}"
        self._lock = threading.Lock()
        self._configs: dict[str, bytes] | None = None  # None: no health snapshot yet
        self._stale: set[str] = set()  # config topics of ours to clear (published or seen)

    @property
    def subscriptions(self) -> list[str]:
        """Home Assistant's birth message, our retained device configs, 0.1's entity configs."""
        node = _slug(self.topics.node)
        return [
            f"{self.prefix}/status",
            f"{self.prefix}/device/+/config",
            f"{self.prefix}/+/{node}/+/config",
        ]

    def wants(self, topic: str) -> bool:
        """Whether a message on `topic` is for discovery (one of `subscriptions`)."""
        return topic == f"{self.prefix}/status" or (
            topic.startswith(f"{self.prefix}/") and topic.endswith("/config")
        )

    def update(self, health: Mapping[str, Any], connected: bool) -> list[tuple[str, bytes]]:
        """A new health snapshot: new or changed configs, and deletions of what went away."""
        new = configs(self.prefix, self.topics, health)
        with self._lock:
            old = self._configs or {}
            self._configs = new
            self._stale |= set(old) - set(new)
            self._stale -= set(new)
            out = [(t, p) for t, p in new.items() if old.get(t) != p]
            if not connected:
                return []  # everything goes out on connect (`everything`)
            gone, self._stale = self._stale, set()
        return [(t, b"") for t in sorted(gone)] + out

    def everything(self) -> list[tuple[str, bytes]]:
        """On connect, and when Home Assistant comes online: deletions, then every config."""
        with self._lock:
            if self._configs is None:
                return []
            gone, self._stale = self._stale, set()
            current = list(self._configs.items())
        return [(t, b"") for t in sorted(gone)] + current

    def take(self, msg: Incoming) -> list[tuple[str, bytes]]:
        """A message under the discovery prefix (paho's thread)."""
        if msg.topic == f"{self.prefix}/status":
            return self.everything() if msg.payload == b"online" else []
        if not msg.retain or not msg.payload or not self._ours(msg.payload):
            return []
        rest = msg.topic[len(self.prefix) + 1 :].split("/")
        if rest[0] != "device":
            return [(msg.topic, b"")]  # edgetpud 0.1's per-entity config: replaced by ours
        with self._lock:
            if self._configs is None:
                self._stale.add(msg.topic)  # decided at the first snapshot
                return []
            if msg.topic in self._configs:
                return []
        return [(msg.topic, b"")]  # a device of ours from before, gone since

    def _ours(self, payload: bytes) -> bool:
        """Whether a retained config is this node's: its device is the node's device
        (`edgetpud_<node>`) or hangs off it (`via_device`)."""
        try:
            body = json.loads(payload)
        except ValueError:
            return False
        device = body.get("device") if isinstance(body, dict) else None
        if not isinstance(device, dict):
            return False
        ids: Iterable[Any] = device.get("identifiers") or ()
        if isinstance(ids, str):
            ids = [ids]
        return self.node_id in map(str, ids) or device.get("via_device") == self.node_id
