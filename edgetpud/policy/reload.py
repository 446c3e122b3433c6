"""What a new config changes in the running daemon: old config, new config → a `ReloadPlan`.

The supervisor carries the plan out after the new config validated (and after a
new MQTT link could be built from it: unusable credential files refuse the reload
before anything changes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgetpud.config import Config, ModelConfig, clock_needed


@dataclass(frozen=True)
class ReloadPlan:
    relink: bool  # MQTT, fleet, node id or decode budget changed: a new link replaces the old
    log_level: str  # the level to set now ("" = leave it)
    runtime_changed: bool  # [runtime] changed: the runtime is checked again
    devices_changed: bool  # [devices] or the clock changed: the watcher judges the devices again
    clock: str  # the clock port verdicts budget power for (config.clock_needed)
    removed: tuple[str, ...]  # models to stop; their queued requests are answered
    added: tuple[str, ...]  # models to build
    restarted: tuple[str, ...]  # models whose workers restart (their queue is kept)

    @property
    def changes_nothing(self) -> bool:
        return not (
            self.relink
            or self.log_level
            or self.runtime_changed
            or self.devices_changed
            or self.removed
            or self.added
            or self.restarted
        )


def plan_reload(
    old: Config,
    new: Config,
    running: Mapping[str, ModelConfig],
    *,
    log_level_pinned: bool = False,
) -> ReloadPlan:
    """`running`: the config each model runs with now (name → its ModelConfig).

    `log_level_pinned`: --log-level was given on the command line, so the config's
    level is not applied.
    """
    decode_changed = new.daemon.max_decode_bytes != old.daemon.max_decode_bytes
    relink = (
        new.mqtt != old.mqtt
        or new.fleet != old.fleet
        or new.daemon.node_id != old.daemon.node_id
        or decode_changed  # the link checks request sizes against it
    )
    level = new.daemon.log_level
    runtime_changed = new.runtime != old.runtime
    clock_changed = new.devices.performance != old.devices.performance
    clock = clock_needed(new)
    restarted = tuple(
        name
        for name, mcfg in new.models.items()
        if name in running
        and (
            mcfg != running[name]
            or runtime_changed
            or decode_changed  # its preprocessing decodes within it
            # the clock its Edge TPU delegate was opened with
            or (not mcfg.performance and clock_changed)
        )
    )
    return ReloadPlan(
        relink=relink,
        log_level=level if level != old.daemon.log_level and not log_level_pinned else "",
        runtime_changed=runtime_changed,
        devices_changed=new.devices != old.devices or clock != clock_needed(old),
        clock=clock,
        removed=tuple(name for name in running if name not in new.models),
        added=tuple(name for name in new.models if name not in running),
        restarted=restarted,
    )
