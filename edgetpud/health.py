"""The health snapshot (schema edgetpud.health/1) and systemd's one-line STATUS.

Read-only views of the service's state: nothing here changes it. The snapshot is
what `…/health` carries (retained) and what `edgetpud status` prints.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from edgetpud import __version__

if TYPE_CHECKING:
    from edgetpud.service import ModelRuntime, Service

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


def snapshot(service: Service) -> dict[str, Any]:
    """Everything a dashboard needs to know, as JSON-ready data."""
    now = time.monotonic()
    meter = service.rates
    plan = service.plan
    device_models = plan.device_models() if plan is not None else {}
    devices = []
    for dev in sorted(service.devices.values(), key=lambda d: d.identity):
        dh = service.device_health.get(dev.identity)
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
                "health": _device_health(dh, now),
                "models": list(device_models.get(dev.identity, ())),
            }
        )
    models = {name: _model(service, rt, meter, now) for name, rt in sorted(service.models.items())}
    mqtt = service.mqtt.stats() if service.mqtt is not None else None
    return {
        "schema": SCHEMA,
        "time": time.time(),
        "daemon": {
            "version": __version__,
            "node": service.cfg.daemon.node_id,
            "uptime_s": round(now - service.started_mono, 1),
            "config": str(service.cfg.path) if service.cfg.path else None,
            "config_generation": service.generation,
            "last_reload_error": service.last_reload_error or None,
            "runtime_error": service.runtime_error or None,
            "status": status_line(service),
        },
        "devices": devices,
        "models": models,
        "plugins": _plugins(),
        "mqtt": mqtt.as_dict() if mqtt is not None else {"connected": False},
    }


def _device_health(dh: Any, now: float) -> dict[str, Any]:
    if dh is None:
        return {"state": "ok"}
    if dh.hung:
        return {"state": "hung", "reason": dh.reason}
    if dh.quarantined_until > now:
        return {
            "state": "quarantined",
            "reason": dh.reason,
            "retry_in_s": round(dh.quarantined_until - now, 1),
        }
    return {"state": "ok"}


def _model(service: Service, rt: ModelRuntime, meter: RateMeter, now: float) -> dict[str, Any]:
    placement = service.plan.placements.get(rt.name) if service.plan is not None else None
    stats = [w.stats() for w in rt.workers.values()]
    processed = sum(s.processed for s in stats)
    p50 = max((s.p50_ms for s in stats), default=0.0)
    p99 = max((s.p99_ms for s in stats), default=0.0)
    if rt.disabled:
        state = "disabled"
    elif not rt.workers:
        state = "waiting"
    elif any(s.state == "running" for s in stats):
        state = "running"
    else:
        state = "starting"
    return {
        "state": state,
        "reason": rt.disabled or (placement.reason if placement is not None else ""),
        "tier": placement.tier
        if placement is not None
        else ("disabled" if rt.disabled else "waiting"),
        "devices": sorted(rt.workers),
        "rate": meter.rate(rt.name, rt.results + rt.errors, now),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "queue_depth": rt.queue.depth,
        "dropped": rt.queue.dropped,
        "results": rt.results,
        "errors": rt.errors,
        "processed_by_current_workers": processed,
    }


def _plugins() -> list[dict[str, str]]:
    from edgetpud import plugins

    return plugins.registry().health()


def status_line(service: Service) -> str:
    """One line for systemd's STATUS=, e.g. `3 models on 2 TPUs, 1 on CPU; mqtt connected`."""
    on_tpu = {name for name, rt in service.models.items() if any(t != "cpu" for t in rt.workers)}
    on_cpu = {
        name for name, rt in service.models.items() if name not in on_tpu and "cpu" in rt.workers
    }
    tpus = {t for rt in service.models.values() for t in rt.workers if t != "cpu"}
    waiting = [n for n, rt in service.models.items() if not rt.workers and not rt.disabled]
    disabled = [n for n, rt in service.models.items() if rt.disabled]

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
    mqtt = service.mqtt.stats() if service.mqtt is not None else None
    link = "mqtt connected" if getattr(mqtt, "connected", False) else "mqtt disconnected"
    text = ", ".join(parts) + f"; {link}"
    if service.runtime_error:
        text += "; no TFLite runtime"
    return text
