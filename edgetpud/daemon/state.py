"""The daemon state the supervisor owns, and the frozen `Snapshot` it publishes of it.

Only the supervisor's thread changes these objects (worker threads add to the
result counters under `ModelRuntime.lock`). Everyone else reads a `Snapshot`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgetpud import __version__
from edgetpud.config import Config, ModelConfig
from edgetpud.devices.model import DeviceInfo
from edgetpud.placement import Plan
from edgetpud.policy.trust import Trust
from edgetpud.snapshot import DeviceTrust, ModelState, ModelView, Snapshot
from edgetpud.workers import ModelQueue, Worker

__all__ = ["Board", "ModelRuntime", "ModelState", "take_snapshot", "trust_view"]


def trust_view(t: Trust, now: float) -> DeviceTrust:
    """What health shows of one device's trust."""
    if t.hung:
        return DeviceTrust("hung", t.reason)
    if t.quarantined_until > now:
        return DeviceTrust("quarantined", t.reason, round(t.quarantined_until - now, 1))
    return DeviceTrust()


@dataclass
class ModelRuntime:
    """Everything that runs for one model: its queue, source, postprocessor, workers."""

    name: str
    cfg: ModelConfig
    queue: ModelQueue
    info: Any = None  # modelfile.ModelInfo of the Edge TPU build
    source: Any = None  # plugins.Source
    postprocessor: Any = None  # plugins.Postprocessor
    preprocess: Callable[..., Any] | None = None
    workers: dict[str, Worker] = field(default_factory=dict)  # target → worker
    pipelines: dict[str, Any] = field(default_factory=dict)  # target → pipeline.SharedPipeline
    disabled: str = ""  # why it cannot run at all
    waiting_since: float = 0.0  # monotonic time it last lost its last worker (0: it has one)
    no_device: str = ""  # set once it waited waiting_timeout: MQTT requests are refused with it
    errors: int = 0
    results: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # the counters above

    @property
    def mqtt_fed(self) -> bool:
        """Its requests come over MQTT (its source is the mqtt plugin)."""
        return self.source is not None and self.source.transport == "mqtt"

    def state(self, worker_states: list[str]) -> ModelState:
        if self.disabled:
            return ModelState.DISABLED
        if not self.workers:
            return ModelState.WAITING
        if "running" in worker_states:
            return ModelState.RUNNING
        return ModelState.STARTING

    def view(self, plan: Plan | None) -> ModelView:
        placed = plan.placements.get(self.name) if plan is not None else None
        stats = [w.stats() for w in self.workers.values()]
        state = self.state([s.state for s in stats])
        tier = placed.tier if placed is not None else ("disabled" if self.disabled else "waiting")
        with self.lock:
            results, errors = self.results, self.errors
        return ModelView(
            name=self.name,
            state=state,
            reason=self.disabled or (placed.reason if placed is not None else ""),
            tier=tier,
            devices=tuple(sorted(self.workers)),
            mqtt_fed=self.mqtt_fed,
            no_device=self.no_device,
            queue_depth=self.queue.depth,
            queue_limit=self.queue.maxsize,
            dropped=self.queue.dropped,
            results=results,
            errors=errors,
            processed_by_current_workers=sum(s.processed for s in stats),
            p50_ms=max((s.p50_ms for s in stats), default=0.0),
            p99_ms=max((s.p99_ms for s in stats), default=0.0),
            io_bytes=_io_bytes(self.info),
            stages=tuple(
                s.to_json()
                for t in self.workers
                if t in self.pipelines
                for s in self.pipelines[t].stats()
            ),
        )


def _io_bytes(info: Any) -> int:
    if info is None:
        return 0
    return sum(t.nbytes for t in (*info.inputs, *info.outputs))


def take_snapshot(
    *,
    cfg: Config,
    generation: int,
    started_mono: float,
    last_reload_error: str,
    runtime_error: str,
    devices: Mapping[str, DeviceInfo],
    device_health: Mapping[str, Trust],
    models: Mapping[str, ModelRuntime],
    plan: Plan | None,
    mqtt: Mapping[str, Any] | None,
    sections: Mapping[str, Any],
) -> Snapshot:
    """A frozen copy of the state, for health, STATUS= and components (supervisor thread)."""
    now = time.monotonic()
    return Snapshot(
        mono=now,
        wall=time.time(),
        version=__version__,
        node=cfg.daemon.node_id,
        uptime_s=round(now - started_mono, 1),
        config=str(cfg.path) if cfg.path else None,
        config_generation=generation,
        last_reload_error=last_reload_error,
        runtime_error=runtime_error,
        devices=tuple(sorted(devices.values(), key=lambda d: d.identity)),
        trust={i: trust_view(t, now) for i, t in device_health.items()},
        device_models=plan.device_models() if plan is not None else {},
        models={name: rt.view(plan) for name, rt in sorted(models.items())},
        mqtt=mqtt,
        sections=dict(sections),
    )


class Board:
    """Where the supervisor publishes its latest snapshot for readers on other threads.

    Publishing swaps one reference (atomic in CPython), so a reader always gets a
    whole snapshot, never a half-updated one.
    """

    def __init__(self) -> None:
        self._latest: Snapshot | None = None

    def publish(self, snap: Snapshot) -> None:
        self._latest = snap

    def latest(self) -> Snapshot | None:
        """The last snapshot published; None before the supervisor's first."""
        return self._latest
