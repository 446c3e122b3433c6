"""The health snapshot (schema edgetpud.health/1) and systemd's one-line STATUS.

Renders a `snapshot.Snapshot`, the frozen picture the supervisor takes: nothing
here reads or changes the daemon's live state, and nothing imports the daemon.
The result is what `…/health` carries (retained) and what `edgetpud status` prints.
"""

from __future__ import annotations

from typing import Any

from edgetpud.devices import thermal
from edgetpud.devices.buses import load, shares
from edgetpud.devices.model import DeviceInfo
from edgetpud.snapshot import ModelState, ModelView, Snapshot

SCHEMA = "edgetpud.health/1"


class RateMeter:
    """Results per second between two snapshots."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def rate(self, key: str, count: int, now: float) -> float:
        then, before = self._last.get(key, (now, count))
        self._last[key] = (now, count)
        elapsed = now - then
        return round((count - before) / elapsed, 2) if elapsed > 0 else 0.0


def render(snap: Snapshot, meter: RateMeter, plugins: list[dict[str, str]]) -> dict[str, Any]:
    """Everything a dashboard needs to know, as JSON-ready data.

    `meter` turns result counts into rates since its previous use; `plugins` is the
    plugin registry's status list.
    """
    devices = []
    for dev in snap.devices:
        trust = snap.trust.get(dev.identity)
        devices.append(
            {
                "identity": dev.identity,
                "kind": dev.kind,
                "port": dev.port,
                "bus": dev.bus,
                "speed_mbps": dev.speed_mbps,
                "state": dev.state,
                "verdict": dev.verdict,
                "reasons": list(dev.reasons),
                "temperature": dev.thermal.temp_c if dev.thermal is not None else None,
                "throttled": dev.thermal.throttled if dev.thermal is not None else False,
                **_thermal(dev),
                "health": trust.as_dict() if trust is not None else {"state": "ok"},
                "models": list(snap.device_models.get(dev.identity, ())),
            }
        )
    models = {name: _model(m, meter, snap.mono) for name, m in snap.models.items()}
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "time": snap.wall,
        "daemon": {
            "version": snap.version,
            "node": snap.node,
            "uptime_s": snap.uptime_s,
            "config": snap.config,
            "config_generation": snap.config_generation,
            "last_reload_error": snap.last_reload_error or None,
            "runtime_error": snap.runtime_error or None,
            "status": status_line(snap),
        },
        "devices": devices,
        "buses": _buses(snap, models),
        "models": models,
        "plugins": plugins,
        "mqtt": dict(snap.mqtt) if snap.mqtt is not None else {"connected": False},
    }
    for name, section in snap.sections.items():
        out.setdefault(name, section)  # a component never overwrites the core sections
    return out


def _thermal(dev: DeviceInfo) -> dict[str, Any]:
    """A PCIe module's trip-point level and drain state; nothing for a USB Accelerator,
    which has no temperature sensor."""
    t = dev.thermal
    if t is None:
        return {}
    return {
        "throttle_level": t.level,
        "trip_points": list(t.trip_points_c),
        "thermal_state": thermal.state(t),
    }


def _buses(snap: Snapshot, models: dict[str, Any]) -> list[dict[str, Any]]:
    """Each USB bus with accelerators: who shares it (and which hub), its link speed, and
    the load through it from the models placed there."""
    rates = {name: float(m["rate"]) for name, m in models.items()}
    sizes = {name: m.io_bytes for name, m in snap.models.items()}
    out = []
    for share in shares(snap.devices):
        per_s, bytes_s = load(share, rates, sizes, snap.device_models)
        out.append(
            {
                "bus": share.bus,
                "speed_mbps": share.speed_mbps,
                "accelerators": list(share.accelerators),
                "hubs": {hub: list(ids) for hub, ids in share.hubs.items()},
                "shared": share.shared,
                "inferences_per_s": per_s,
                "bytes_per_s": bytes_s,
                "summary": share.describe(),
            }
        )
    return out


def _model(m: ModelView, meter: RateMeter, now: float) -> dict[str, Any]:
    return {
        "state": m.state.value,
        "reason": m.reason,
        "tier": m.tier,
        "devices": list(m.devices),
        "rate": meter.rate(m.name, m.results + m.errors, now),
        "p50_ms": round(m.p50_ms, 3),
        "p99_ms": round(m.p99_ms, 3),
        "queue_depth": m.queue_depth,
        "dropped": m.dropped,
        "results": m.results,
        "errors": m.errors,
        "processed_by_current_workers": m.processed_by_current_workers,
        **({"stages": [dict(s) for s in m.stages]} if m.stages else {}),
    }


def status_line(snap: Snapshot) -> str:
    """One line for systemd's STATUS=, e.g. `3 models on 2 TPUs, 1 on CPU; mqtt connected`."""
    models = snap.models.values()
    on_tpu = {m.name for m in models if any(t != "cpu" for t in m.devices)}
    on_cpu = {m.name for m in models if m.name not in on_tpu and "cpu" in m.devices}
    tpus = {t for m in models for t in m.devices if t != "cpu"}
    waiting = [m for m in models if not m.devices and m.state is not ModelState.DISABLED]
    disabled = [m for m in models if m.state is ModelState.DISABLED]

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    parts = []
    if on_tpu:
        parts.append(f"{count(len(on_tpu), 'model')} on {count(len(tpus), 'TPU')}")
    if on_cpu:
        parts.append(f"{len(on_cpu)} on CPU" if parts else f"{count(len(on_cpu), 'model')} on CPU")
    if waiting:
        parts.append(f"{len(waiting)} waiting")
    if disabled:
        parts.append(f"{len(disabled)} disabled")
    if not parts:
        parts.append("no models")
    link = "mqtt connected" if snap.mqtt_connected else "mqtt disconnected"
    text = ", ".join(parts) + f"; {link}"
    if snap.runtime_error:
        text += "; no TFLite runtime"
    return text
