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
from dataclasses import replace as dataclass_replace
from types import FrameType
from typing import Any

from edgetpud import config, health, pipeline, placement, plugins
from edgetpud.config import Config
from edgetpud.daemon import events as ev
from edgetpud.daemon.fleet import FleetBackpressure
from edgetpud.daemon.intake import Intake
from edgetpud.daemon.models import Models
from edgetpud.daemon.ports import Component, Link, LinkFactory, Notifier, Runtime, Watcher
from edgetpud.daemon.state import Board, DeviceHealth, ModelRuntime, take_snapshot
from edgetpud.devices import thermal
from edgetpud.devices.model import DeviceInfo
from edgetpud.errors import ConfigError, ConfigUnreadableError, EdgetpudError
from edgetpud.messages import Result
from edgetpud.snapshot import Snapshot
from edgetpud.workers import Worker, WorkerReport

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
        self.devices: dict[str, DeviceInfo] = {}
        self.device_health: dict[str, DeviceHealth] = {}
        self.models = Models(
            cfg, parts.runtime, self.events.put, parts.intake, parts.result_observers
        )
        self.plan: placement.Plan | None = None
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
        self._start_link(self._new_link(self.cfg))
        self.watcher = self.parts.watcher_factory()
        for dev in self.watcher.start():
            self.devices[dev.identity] = dev
        log.info("%d Edge TPU(s) found", len(self.devices))
        for name, mcfg in self.cfg.models.items():
            self.models.create(name, mcfg)
        self._replan("start")
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
                self._dump_threads()
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
                    self._on_worker_report(event)
                case ev.DeviceChanged():
                    self._on_device_event(event)
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
        replan = False
        for rt in self.models:
            for target, worker in list(rt.workers.items()):
                if worker.check_stall(now):
                    self._on_stall(rt, target, worker)
                    replan = True
        for identity, dh in self.device_health.items():
            if dh.quarantined_until and now >= dh.quarantined_until and not dh.hung:
                log.info("%s: quarantine over, trying it again", identity)
                dh.quarantined_until = 0.0
                dh.reason = ""
                replan = True
        if replan:
            self._replan("device health changed")
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
        """MQTT clients of a model with no device get an answer after waiting_timeout.

        Until then requests queue, so an accelerator replugged within the timeout serves
        them; after it, queued MQTT requests are answered `no_device` and new ones refused
        at once (other sources hold back by themselves and keep waiting).
        """
        limit = self.cfg.daemon.waiting_timeout
        for rt in self.models:
            name = rt.name
            if rt.workers or rt.disabled or not rt.mqtt_fed:  # other sources hold back
                if rt.no_device:
                    log.info("model %s runs again: taking MQTT requests", name)
                rt.waiting_since, rt.no_device = 0.0, ""
                continue
            if not rt.waiting_since:
                rt.waiting_since = now
            if not limit or rt.no_device or now - rt.waiting_since < limit:
                continue
            placed = self.plan.placements.get(name) if self.plan is not None else None
            why = placed.reason if placed is not None else "no usable device"
            rt.no_device = (
                f"no_device: model {name} has had no device to run on for {limit:g} s "
                f"({why.removeprefix('waiting: ')}); retry when the node's health topic "
                "shows it running"
            )
            answered = self.models.answer_leftovers(rt, rt.no_device)  # all came over MQTT
            log.warning(
                "model %s: no device for %g s (%s); answered %d queued MQTT request(s) with "
                "no_device, refusing new ones until it runs (daemon.waiting_timeout)",
                name,
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

    # ---- devices ---------------------------------------------------------------------

    def _on_device_event(self, event: ev.DeviceChanged) -> None:
        dev = event.device
        before = self.devices.get(dev.identity)
        if event.action == "changed" and before is not None and thermal.reading_only(before, dev):
            self.devices[dev.identity] = dev  # a new temperature reading: health shows it
            return
        crossed = thermal.crossing(before, dev) if event.action != "removed" else None
        if crossed is not None:
            self._publish_event("device_thermal", **crossed)
        log.info(
            "device %s %s (%s: %s)",
            dev.identity,
            event.action,
            dev.verdict,
            "; ".join(dev.reasons) or "ok",
        )
        if event.action == "removed":
            self.devices.pop(dev.identity, None)
            self.device_health.pop(dev.identity, None)
        else:
            self.devices[dev.identity] = dev
            if event.action == "added":
                self.device_health.pop(dev.identity, None)  # a replug clears hung/quarantine
        self._publish_event(
            "device_" + event.action,
            device=dev.identity,
            state=dev.state,
            verdict=dev.verdict,
            reasons=list(dev.reasons),
        )
        if event.action == "added" and dev.verdict == "rejected":
            self._publish_event("device_rejected", device=dev.identity, reasons=list(dev.reasons))
        self._replan(f"device {dev.identity} {event.action}")

    def _planning_devices(self) -> list[DeviceInfo]:
        now = time.monotonic()
        out = []
        for dev in self.devices.values():
            dh = self.device_health.get(dev.identity)
            if dh is not None and dh.blocked(now):
                out.append(
                    dataclass_replace(dev, verdict="rejected", reasons=(*dev.reasons, dh.reason))
                )
            else:
                out.append(dev)
        return out

    # ---- worker reports --------------------------------------------------------------

    def _on_worker_report(self, report: WorkerReport) -> None:
        rt = self.models.by_name.get(report.model)
        device = report.device
        # a pipelined model's worker runs on all its stages' devices ("usb:2-1+usb:2-2"):
        # what happens to it happens to each of them
        parts = device.split(pipeline.TARGET_SEPARATOR)
        if report.kind == "opened":
            if device != "cpu" and self.watcher is not None:
                for part in parts:
                    self.watcher.forget_bad_port(part)
            self._health_dirty = True
        elif report.kind == "open_failed":
            log.error("model %s could not open on %s: %s", report.model, device, report.error)
            self._publish_event(
                "open_failed", model=report.model, device=device, error=report.error
            )
            if rt is not None:
                rt.workers.pop(device, None)
            if device == "cpu":
                if rt is not None:
                    rt.disabled = report.error
            else:
                fault = self.parts.runtime.is_device_fault(report.exc)
                if fault and self.watcher is not None and len(parts) == 1:
                    self.watcher.learn_bad_port(device, report.error)
                for part in parts:
                    self._quarantine(part, f"could not open an Edge TPU context: {report.error}")
            self._replan(f"open failed on {device}")
        elif report.kind == "invoke_error":
            limit = self.cfg.devices.quarantine_after
            dh = self.device_health.get(parts[0])
            # errors reported after the quarantine began (the worker is still stopping)
            # must not quarantine it again: that would double the backoff at once
            already = dh is not None and dh.blocked(time.monotonic())
            if device != "cpu" and report.consecutive_errors >= limit and not already:
                for part in parts:
                    self._quarantine(
                        part,
                        f"{report.consecutive_errors} consecutive inference errors: {report.error}",
                    )
                self._replan(f"{device} quarantined")
        elif report.kind == "host_lost":
            # the worker hands its requests back and reopens in a restarted host by itself
            self._publish_event("host_died", model=report.model, device=device, reason=report.error)
            self._health_dirty = True
        elif report.kind == "stopped":
            self._health_dirty = True

    def _quarantine(self, identity: str, reason: str) -> None:
        dh = self.device_health.setdefault(identity, DeviceHealth())
        dh.quarantines += 1
        backoff = self.cfg.devices.quarantine_backoff * 2 ** min(dh.quarantines - 1, 10)
        dh.quarantined_until = time.monotonic() + backoff
        dh.reason = f"quarantined for {backoff:.0f} s: {reason}"
        log.warning("%s %s", identity, dh.reason)
        self._publish_event(
            "device_quarantined", device=identity, reason=dh.reason, retry_in_s=backoff
        )

    def _on_stall(self, rt: ModelRuntime, target: str, worker: Worker) -> None:
        rt.workers.pop(target, None)
        stalled = (
            f"an inference of model {rt.name} has run longer than stall_timeout "
            f"({self.cfg.daemon.stall_timeout:g} s)"
        )
        # Its device host is killed and the device reset (edgetpud/hosts); it is quarantined
        # meanwhile, so the model is served elsewhere, and opened again when the quarantine
        # ends: no replug. Only a device whose host could not be reached (none running) is
        # treated as hung until it is replugged. A pipelined model's worker runs on each of
        # its stages' devices (usb:2-1+usb:2-2): each is recovered.
        parts = target.split(pipeline.TARGET_SEPARATOR)
        recovered = [self.parts.runtime.recover(part, stalled) for part in parts]
        if target != "cpu" and all(recovered):
            reason = f"{stalled}; its host was killed and the device is being reset"
            log.error("worker %s stalled: %s", worker.name, reason)
            for part in parts:
                self._quarantine(part, f"wedged: {reason}")
        elif target == "cpu":
            reason = f"{stalled}; the CPU host was killed and is restarted"
            log.error("worker %s stalled: %s", worker.name, reason)
        else:
            reason = f"{stalled}; the device is treated as hung until it is replugged"
            log.error("worker %s stalled: %s", worker.name, reason)
            for part in parts:
                dh = self.device_health.setdefault(part, DeviceHealth())
                dh.hung = True
                dh.reason = f"hung: {reason}"
        self._publish_event("worker_stalled", model=rt.name, device=target, reason=reason)

    # ---- placement -------------------------------------------------------------------

    def _replan(self, why: str) -> None:
        """Plan with the current devices and models and apply only what changed."""
        new = placement.plan(self._planning_devices(), self.models.specs(), self.plan)
        for move in new.moves:
            log.info(
                "model %s: %s -> %s (%s)",
                move.model,
                list(move.before) or "-",
                list(move.after) or "-",
                move.reason,
            )
            self._publish_event(
                "assignment_changed",
                model=move.model,
                before=list(move.before),
                after=list(move.after),
                reason=move.reason,
                trigger=why,
            )
        for name, placed in new.placements.items():
            before = self.plan.placements.get(name) if self.plan is not None else None
            if placed.tier == "waiting" and (
                before is None or before.tier != "waiting" or before.reason != placed.reason
            ):
                log.warning("model %s waiting: %s", name, placed.reason.removeprefix("waiting: "))
        self.plan = new
        self.models.apply(new)
        self._health_dirty = True

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
        old = self.cfg
        link = None
        if (
            new.mqtt != old.mqtt
            or new.fleet != old.fleet
            or new.daemon.node_id != old.daemon.node_id
            or new.daemon.max_decode_bytes != old.daemon.max_decode_bytes  # the link checks it
        ):
            # before anything changes: unusable files refuse the reload; the new link takes
            # over the old one's backlog, and what workers publish while the old one stops
            backlog = self.mqtt.outbox if self.mqtt is not None else None
            link = self._new_link(new, backlog)
        self.cfg = new
        self.models.cfg = new
        if new.daemon.log_level != old.daemon.log_level and not self.log_level_pinned:
            logging.getLogger().setLevel(new.daemon.log_level.upper())
        if link is not None:
            log.info("MQTT settings changed: reconnecting")
            if self.mqtt is not None:
                self.mqtt.stop(timeout=2.0)
            self.fleet.reset()
            self._start_link(link)
        if new.runtime != old.runtime:
            self._check_runtime()
        deadline = time.monotonic() + new.daemon.drain_timeout
        for name in list(self.models.by_name):
            if name not in new.models:
                self.models.remove(name, deadline)
        for name, mcfg in new.models.items():
            rt_old = self.models.by_name.get(name)
            if rt_old is None:
                self.models.create(name, mcfg)
                log.info("model %s added", name)
            elif (
                mcfg != rt_old.cfg
                or new.runtime != old.runtime
                or new.daemon.max_decode_bytes != old.daemon.max_decode_bytes  # preprocess
                # the clock its Edge TPU delegate was opened with
                or (not mcfg.performance and new.devices.performance != old.devices.performance)
            ):
                self.models.restart(rt_old, mcfg, deadline)
        clock = config.clock_needed(new)
        changed = new.devices != old.devices or clock != config.clock_needed(old)
        if changed and self.watcher is not None:
            for dev in self.watcher.set_policy(new.devices, clock):
                self.devices[dev.identity] = dev
        if self.plan is not None:  # changed models are placed afresh
            kept = {
                n: p
                for n, p in self.plan.placements.items()
                if n in self.models.by_name and self.models.by_name[n].workers
            }
            self.plan = dataclass_replace(self.plan, placements=kept, moves=())
        for component in self.parts.components:
            component.apply_config(new)
        self._replan("reload")

    # ---- health and events -----------------------------------------------------------

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
            devices=self.devices,
            device_health=self.device_health,
            models=self.models.by_name,
            plan=self.plan,
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

    def _dump_threads(self) -> None:
        frames = sys._current_frames()
        lines = []
        for thread in threading.enumerate():
            frame = frames.get(thread.ident or -1)
            stack = (
                "".join(traceback.format_stack(frame)) if frame is not None else "  (no frame)\n"
            )
            lines.append(f"--- thread {thread.name} (daemon={thread.daemon}):\n{stack}")
        log.warning("SIGUSR1: %d threads\n%s", len(lines), "\n".join(lines))
