"""The supervisor: the one loop, and the only code that changes daemon state.

Other threads talk to it through `self.events` (a queue of `events.Event`): udev
changes, worker reports, link and component notices. Signal handlers only set
flags. On every device or config change it re-plans and applies only the
difference between the plan and what runs. Its parts (link, watcher, runtime,
notifier, components) are built by edgetpud/app.py and passed in.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from edgetpud import config, health, plugins
from edgetpud.config import Config
from edgetpud.daemon import events as ev
from edgetpud.daemon.fleet import FleetBackpressure
from edgetpud.daemon.intake import Intake
from edgetpud.daemon.models import Models
from edgetpud.daemon.placer import Placer
from edgetpud.daemon.ports import Component, Link, LinkFactory, Notifier, Runtime, Watcher
from edgetpud.daemon.state import Board, take_snapshot
from edgetpud.errors import ConfigError, ConfigUnreadableError, EdgetpudError
from edgetpud.messages import Result
from edgetpud.policy import admission
from edgetpud.policy.reload import plan_reload
from edgetpud.snapshot import Snapshot
from edgetpud.workers import WorkerReport

log = logging.getLogger(__name__)

TICK = 0.05  # seconds between supervisor turns when nothing happens
HEALTH_MIN_GAP = 0.5  # a change publishes health at most this often
STATUS_INTERVAL = 0.5  # how often systemd's STATUS= line is recomputed (it walks every model)
STOP_MARGIN_S = 15.0  # beyond drain_timeout: closing workers, health, "offline"


@dataclass(frozen=True)
class Parts:
    """What edgetpud/app.py builds for the supervisor."""

    link_factory: LinkFactory
    watcher_factory: Callable[[], Watcher]  # built after the link has started
    runtime: Runtime
    notifier: Notifier
    events: ev.EventQueue
    board: Board
    intake: Intake
    components: Sequence[Component] = ()
    # called on the worker thread with every result, after it is published
    result_observers: Sequence[Callable[[Result], None]] = ()
    # called on the supervisor's thread with every health document rendered
    health_listeners: Sequence[Callable[[Mapping[str, Any]], None]] = ()


class Supervisor:
    """edgetpud's daemon. `run()` blocks until stopped; returns the exit code."""

    def __init__(self, cfg: Config, parts: Parts, *, log_level_pinned: bool = False) -> None:
        self.cfg = cfg
        self.generation = 1
        self.log_level_pinned = log_level_pinned  # --log-level given: reloads keep the level
        self.parts = parts
        self.notifier = parts.notifier
        self.events = parts.events
        self.watcher: Watcher | None = None
        self.mqtt: Link | None = None
        self.models = Models(
            cfg, parts.runtime, self.events.put, parts.intake, parts.result_observers
        )
        self.placer = Placer(self.models, parts.runtime, self._publish_event, self._touch)
        self.runtime_error = ""
        self.last_reload_error = ""
        self.started_mono = time.monotonic()
        self.rates = health.RateMeter()
        self.fleet = FleetBackpressure()
        self._stop_requested = False
        self._reload_requested = False
        self._dump_requested = False
        self._health_dirty = True
        self._last_health = 0.0
        self._last_watchdog = 0.0
        self._last_status = ""
        self._last_status_at = 0.0

    # ---- signals ---------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True  # coalesced: many HUPs before the loop turns = one reload

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        self._dump_requested = True

    # ---- lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        """Start in order, loop, stop in reverse. Returns the process exit code."""
        try:
            self._start()
            status = self._status_line()
            self.notifier.ready(status)
            log.info("ready: %s", status)
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _start(self) -> None:
        self._check_runtime()
        link = self._new_link(self.cfg)
        self.mqtt = link  # built but not connected: events wait in its outbox
        self.models.link = link
        self.watcher = self.parts.watcher_factory()
        self.placer.watcher = self.watcher
        for dev in self.watcher.start():
            self.placer.devices[dev.identity] = dev
        log.info("%d Edge TPU(s) found", len(self.placer.devices))
        for name, mcfg in self.cfg.models.items():
            self.models.create(name, mcfg)
        self.placer.replan("start")
        # Connect (subscribe, then say `online`) only now that every configured model is
        # in the admission table: a request sent the moment `online` arrives is served,
        # not answered `unknown_model`.
        self._start_link(link)
        for component in self.parts.components:
            component.start()
        self._publish_health(force=True)

    def _check_runtime(self) -> None:
        try:
            name = self.parts.runtime.name(self.cfg.runtime.runtime)
        except EdgetpudError as exc:
            self.runtime_error = str(exc)
            log.error(
                "no TFLite runtime: %s; serving nothing until one is installed and the "
                "service restarted (systemctl restart edgetpud)",
                exc,
            )
        else:
            self.runtime_error = ""
            log.info("TFLite runtime: %s", name)
        self.models.runtime_error = self.runtime_error

    def _new_link(self, cfg: Config, outbox: Any = None) -> Link:
        """A link for `cfg`, not started; raises ConfigUnreadableError for unusable credentials.

        `outbox`: the backlog of the link it replaces, which it delivers (nothing lost)."""
        return self.parts.link_factory(
            cfg.mqtt,
            cfg.daemon.node_id,
            on_request=self.parts.intake.submit,
            on_connection=self._on_link_connection,
            fleet_group=cfg.fleet.group,
            outbox=outbox,
            max_decode_bytes=cfg.daemon.max_decode_bytes,
        )

    def _start_link(self, link: Link) -> None:
        self.mqtt = link
        self.models.link = link
        link.start()

    def _on_link_connection(self, connected: bool) -> None:
        """Called from paho's thread."""
        self._health_dirty = True
        if connected:
            self.events.put(ev.LinkConnected())

    def _shutdown(self) -> None:
        """Stop in reverse order; every step is safe if its part never started."""
        # the drain, then up to STOP_MARGIN_S for workers to close, health and "offline"
        self.notifier.stopping(within=self.cfg.daemon.drain_timeout + STOP_MARGIN_S)
        log.info("stopping")
        deadline = time.monotonic() + self.cfg.daemon.drain_timeout
        for rt in self.models:
            self.models.stop_source(rt)
        if self.mqtt is not None:
            self.mqtt.set_models({})  # stop taking requests
        self._drain(deadline)
        self.models.stop_all(deadline, "edgetpud is shutting down; request not processed")
        for component in reversed(self.parts.components):
            try:
                component.stop(deadline)
            except Exception:
                log.exception("stopping %s failed", component.name)
        if self.watcher is not None:
            self.watcher.close()
        if self.mqtt is not None:
            self._publish_health(force=True)
            self.mqtt.stop(timeout=max(1.0, deadline - time.monotonic()))
        self.notifier.close()
        log.info("stopped")

    def _drain(self, deadline: float) -> None:
        """Let queued and in-flight requests finish on the devices that have them."""
        while time.monotonic() < deadline:
            if not self.models.busy():
                return
            self._handle_pending_events()
            time.sleep(TICK)

    # ---- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop_requested:
            try:
                event = self.events.get(timeout=TICK)
            except queue.Empty:
                pass
            else:
                self.dispatch(event)
            self._handle_pending_events()
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            if self._dump_requested:
                self._dump_requested = False
                dump_threads()
            self._tick()

    def _handle_pending_events(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self.dispatch(event)

    def dispatch(self, event: ev.Event) -> None:
        """Act on one event from the queue (supervisor thread)."""
        try:
            match event:
                case WorkerReport():
                    self.placer.on_worker_report(event)
                case ev.DeviceChanged():
                    self.placer.on_device_event(event)
                case ev.LinkConnected():
                    self._publish_health(force=True)
                case ev.Publish(kind=kind, fields=fields):
                    self._publish_event(kind, **fields)
                case ev.Call(fn=fn):
                    fn()
                case _:  # the queue's type is not enforced at run time: a bug elsewhere
                    log.warning("unknown event %r on the supervisor's queue; ignored", event)  # type: ignore[unreachable]
        except Exception:
            log.exception("handling %r failed; carrying on", event)

    def _tick(self) -> None:
        now = time.monotonic()
        self.placer.tick(now)
        self._check_waiting(now)
        self.models.publish_intake()
        if self.cfg.fleet.group and self.mqtt is not None:
            self.fleet.step(self.models, self.mqtt)
        if now - self._last_health >= self.cfg.daemon.health_interval or (
            self._health_dirty and now - self._last_health >= HEALTH_MIN_GAP
        ):
            self._publish_health()
        interval = self.notifier.watchdog_interval
        if interval and now - self._last_watchdog >= min(1.0, interval / 3) and self._healthy():
            self.notifier.watchdog()
            self._last_watchdog = now
        if now - self._last_status_at >= STATUS_INTERVAL:
            self._last_status_at = now
            status = self._status_line()
            if status != self._last_status:
                self._last_status = status
                self.notifier.status(status)

    def _check_waiting(self, now: float) -> None:
        """A model without a device refuses MQTT requests after daemon.waiting_timeout."""
        limit = self.cfg.daemon.waiting_timeout
        plan = self.placer.plan
        for rt in self.models:
            placed = plan.placements.get(rt.name) if plan is not None else None
            why = placed.reason if placed is not None else "no usable device"
            w = admission.waiting(
                rt.name,
                has_workers=bool(rt.workers),
                disabled=bool(rt.disabled),
                mqtt_fed=rt.mqtt_fed,
                since=rt.waiting_since,
                no_device=rt.no_device,
                now=now,
                limit=limit,
                why=why,
            )
            rt.waiting_since, rt.no_device = w.since, w.no_device
            if w.change == "runs_again":
                log.info("model %s runs again: taking MQTT requests", rt.name)
            elif w.change == "gave_up":
                answered = self.models.answer_leftovers(rt, rt.no_device)  # all came over MQTT
                log.warning(
                    "model %s: no device for %g s (%s); answered %d queued MQTT request(s) "
                    "with no_device, refusing new ones until it runs (daemon.waiting_timeout)",
                    rt.name,
                    limit,
                    why,
                    answered,
                )

    def _healthy(self) -> bool:
        """Feed the watchdog only while every running worker's loop is turning.

        A stalled invoke is handled by failover (check_stall) first; the watchdog is
        the last resort for a worker stuck somewhere failover cannot see.
        """
        now = time.monotonic()
        limit = self.cfg.daemon.stall_timeout * 3 + 1.0
        for rt in self.models:
            for worker in rt.workers.values():
                stats = worker.stats()
                if stats.state == "running" and stats.heartbeat and now - stats.heartbeat > limit:
                    return False
        return True

    # ---- reload ----------------------------------------------------------------------

    def reload(self) -> bool:
        """Validate the config file again and apply only the difference; keep the old on error."""
        path = self.cfg.path
        if path is None:
            return False
        self.notifier.reloading()
        try:
            new = config.load(path, lenient_plugins=True)
            self._apply_config(new)  # a file it names, unusable on opening, refuses it too
        except (ConfigError, ConfigUnreadableError) as exc:
            self.last_reload_error = str(exc)
            errors = [str(i) for i in exc.issues] if isinstance(exc, ConfigError) else [str(exc)]
            log.error(
                "reload refused, still running generation %d; fix the config (edgetpud "
                "check-config %s), then systemctl reload edgetpud. %s",
                self.generation,
                path,
                exc,
            )
            self._publish_event("reload_failed", errors=errors, generation=self.generation)
            self._health_dirty = True
            self.notifier.ready(self._status_line())
            return False
        self.generation += 1
        self.last_reload_error = ""
        log.info("reload applied: generation %d", self.generation)
        self._publish_event("reload_ok", generation=self.generation, models=sorted(new.models))
        self.notifier.ready(self._status_line())
        return True

    def _apply_config(self, new: Config) -> None:
        running = {name: rt.cfg for name, rt in self.models.by_name.items()}
        plan = plan_reload(self.cfg, new, running, log_level_pinned=self.log_level_pinned)
        # before anything changes: unusable credential files refuse the reload; the new link
        # takes over the old one's backlog, and what workers publish while the old one stops
        link = None
        if plan.relink:
            link = self._new_link(new, self.mqtt.outbox if self.mqtt is not None else None)
        self.cfg = new
        self.models.cfg = new
        if plan.log_level:
            logging.getLogger().setLevel(plan.log_level.upper())
        if link is not None:
            log.info("MQTT settings changed: reconnecting")
            if self.mqtt is not None:
                self.mqtt.stop(timeout=2.0)
            self.fleet.reset()
            self._start_link(link)
        if plan.runtime_changed:
            self._check_runtime()
        deadline = time.monotonic() + new.daemon.drain_timeout
        for name in plan.removed:
            self.models.remove(name, deadline)
        for name in plan.added:
            self.models.create(name, new.models[name])
            log.info("model %s added", name)
        for name in plan.restarted:
            self.models.restart(self.models.by_name[name], new.models[name], deadline)
        if plan.devices_changed and self.watcher is not None:
            for dev in self.watcher.set_policy(new.devices, plan.clock):
                self.placer.devices[dev.identity] = dev
        self.placer.forget_placements_of_stopped()
        for component in self.parts.components:
            component.apply_config(new)
        self.placer.replan("reload")

    # ---- health and events -----------------------------------------------------------

    def _touch(self) -> None:
        self._health_dirty = True

    def _publish_event(self, kind: str, **fields: Any) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_event(
                {"event": kind, "node": self.cfg.daemon.node_id, "time": time.time(), **fields}
            )
        self._health_dirty = True

    def snapshot(self) -> Snapshot:
        """Take a snapshot of the state and publish it on the board."""
        sections: dict[str, Any] = {}
        for component in self.parts.components:
            try:
                section = component.health()
            except Exception:
                log.exception("the health section of %s failed", component.name)
                continue
            if section is not None:
                sections[component.name] = section
        stats = self.mqtt.stats() if self.mqtt is not None else None
        snap = take_snapshot(
            cfg=self.cfg,
            generation=self.generation,
            started_mono=self.started_mono,
            last_reload_error=self.last_reload_error,
            runtime_error=self.runtime_error,
            devices=self.placer.devices,
            device_health=self.placer.trust,
            models=self.models.by_name,
            plan=self.placer.plan,
            mqtt=stats.as_dict() if stats is not None else None,
            sections=sections,
        )
        self.parts.board.publish(snap)
        return snap

    def _publish_health(self, force: bool = False) -> None:
        self._last_health = time.monotonic()
        self._health_dirty = False
        if self.mqtt is None:
            return
        try:
            doc = health.render(self.snapshot(), self.rates, plugins.registry().health())
            self.mqtt.publish_health(doc)
        except Exception:
            log.exception("building the health snapshot failed")
            return
        for listener in self.parts.health_listeners:
            try:
                listener(doc)
            except Exception:
                log.exception("a health listener failed")

    def _status_line(self) -> str:
        return health.status_line(self.snapshot())


def dump_threads() -> None:
    """SIGUSR1: log every thread's stack (to find where a stuck daemon waits)."""
    frames = sys._current_frames()
    lines = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "  (no frame)\n"
        lines.append(f"--- thread {thread.name} (daemon={thread.daemon}):\n{stack}")
    log.warning("SIGUSR1: %d threads\n%s", len(lines), "\n".join(lines))
