"""The composition root: builds the daemon's parts from the config and runs them.

`edgetpud run` (commands/run.py) calls `run()`; nothing else imports this module.
This is the one place that knows the concrete classes: the MQTT link, the device
watcher, the TFLite runtime, sd_notify, and any component (see `components()`).
The supervisor (edgetpud/daemon/) sees them only through the Protocols in
edgetpud/daemon/ports.py.
"""

from __future__ import annotations

import logging
import queue
import sys
from pathlib import Path
from typing import Any, cast

from edgetpud import __version__, malloc, runtime, threadnames, versions
from edgetpud.config import Config, RuntimeConfig, clock_needed
from edgetpud.daemon.events import DeviceEvents, EventQueue
from edgetpud.daemon.intake import Intake
from edgetpud.daemon.ports import Component, ComponentContext, ObservesResults, ReadsHealth
from edgetpud.daemon.state import Board
from edgetpud.daemon.supervisor import Parts, Supervisor
from edgetpud.devices import DeviceWatcher, access
from edgetpud.devices.reset import reset_usb_device
from edgetpud.frigate import FrigateComponent
from edgetpud.hosts import HostPool
from edgetpud.hosts.component import HostsComponent
from edgetpud.mqtt import MqttLink
from edgetpud.notify import Notifier
from edgetpud.workers import Session

log = logging.getLogger(__name__)

# Workers spend most of their time in invoke(), which releases the GIL; a worker thread whose
# invoke returned needs the GIL back soon. CPython's default switch interval (5 ms, about two
# MobileNet inferences) lets a busy Python thread (pre/postprocessing, MQTT) keep it that
# long first. With one interpreter per TPU, 1 ms served 20-60 % more inferences/s with 4
# simulated TPUs on 2 cores; with several (runtime.tpu_interpreters) the next invoke is
# already queued on the device, and 1 ms still measured 0.889 vs 0.822-0.869 of the
# ceiling with two (docs/benchmarks.md).
SWITCH_INTERVAL_S = 0.001


class RuntimeAdapter:
    """The supervisor's `ports.Runtime`: sessions in device hosts (edgetpud/hosts), one
    child process per device, so that libedgetpu's aborts and wedges cost a host."""

    def __init__(self, pool: HostPool) -> None:
        self.pool = pool

    def name(self, prefer: str) -> str:
        return runtime.runtime_name(prefer)

    def open(self, model: Path, target: str, rcfg: RuntimeConfig, performance: str) -> Session:
        return self.pool.open_session(
            target,
            model,
            library=rcfg.library,
            performance=performance,
            cpu_threads=rcfg.cpu_threads,
            prefer=rcfg.runtime,
        )

    def recover(self, device: str, why: str) -> bool:
        """A wedged invoke: kill the device's host, reset the device once it is gone."""
        return self.pool.recover(device, why)

    def replugged(self, device: str) -> None:
        self.pool.replugged(device)

    def is_device_fault(self, exc: BaseException | None) -> bool:
        """Whether the device itself refused (a port worth remembering as bad).

        A missing Edge TPU runtime or a model the runtime cannot prepare fails on every
        port alike: learning the port as bad would send the admin to move a healthy
        accelerator.
        """
        return isinstance(exc, runtime.DeviceUnavailable)


def reset_device(identity: str) -> str:
    """Reset a wedged Edge TPU once its host is gone (HostPool's `reset`): USBDEVFS_RESET
    on a USB Accelerator's /dev/bus/usb node, which re-enumerates it on the same port
    (it comes back in firmware-download mode and is loaded again at the next open).
    A PCIe module has no such reset: "" (it is closed and opened again). Raises
    ResetFailed with what to do when the reset cannot be done."""
    kind, _, name = identity.partition(":")
    if kind != "usb":
        return ""
    node = access.device_node("usb", name)
    if not node:
        return f"no reset: {identity} has no device node now (unplugged?)"
    reset_usb_device(node)
    return f"reset {identity} (USBDEVFS_RESET on {node})"


def components(cfg: Config, ctx: ComponentContext) -> list[Component]:
    """The optional parts the supervisor starts after the devices and models, stops
    before them, and hands each accepted reload to (ports.Component).

    A new component is constructed here from `cfg` and `ctx` (the latest snapshot,
    a way to post events to the supervisor, a way to submit requests) and appended.
    One that also implements ports.ObservesResults or ports.ReadsHealth gets every
    result or every health document.
    """
    from edgetpud.metrics import MetricsComponent  # prometheus_client: only this module

    # the Frigate endpoint last: it starts taking requests once the rest runs, and stops first
    return [MetricsComponent(cfg), versions.Versions(cfg), FrigateComponent(cfg, ctx)]


def build(cfg: Config, *, log_level_pinned: bool = False) -> Supervisor:
    """The supervisor with every real part, not started."""
    events: EventQueue = queue.Queue()
    board = Board()
    intake = Intake()
    pool = HostPool(
        reset=reset_device, runtime=cfg.runtime.runtime, log_level=cfg.daemon.log_level.upper()
    )
    # The hosts' component comes first, so it stops last: after the other components.
    parts_built: list[Component] = [
        HostsComponent(pool),
        *components(cfg, ComponentContext(board, events.put, intake.submit)),
    ]

    def watcher() -> DeviceWatcher:
        return DeviceWatcher(
            cfg.devices,
            cfg.daemon.state_dir,
            cast(Any, DeviceEvents(events)),  # its DeviceEvents become daemon DeviceChanged
            performance=clock_needed(cfg),  # 900 mA per accelerator if a model runs at "max"
        )

    parts = Parts(
        link_factory=MqttLink,
        watcher_factory=watcher,
        runtime=RuntimeAdapter(pool),
        notifier=Notifier(),
        events=events,
        board=board,
        intake=intake,
        components=parts_built,
        result_observers=[c.observe for c in parts_built if isinstance(c, ObservesResults)],
        health_listeners=[c.on_health for c in parts_built if isinstance(c, ReadsHealth)],
    )
    return Supervisor(cfg, parts, log_level_pinned=log_level_pinned)


def run(cfg: Config, *, log_level_pinned: bool = False) -> int:
    """Entry point for `edgetpud run`: build the daemon, wire signals, run it.

    `log_level_pinned`: --log-level was given, so reloads leave the level alone.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    malloc.cap_arenas()  # before the threads: their freed memory parks in fewer arenas
    threadnames.install()
    supervisor = build(cfg, log_level_pinned=log_level_pinned)
    supervisor.install_signal_handlers()
    log.info("edgetpud %s starting (config %s, node %s)", __version__, cfg.path, cfg.daemon.node_id)
    return supervisor.run()
