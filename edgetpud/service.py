"""The composition root and supervisor: the only place that changes shared state.

`Service` builds every part once (devices watcher, MQTT link, plugins, workers)
and owns one event loop. Everything else talks to it through `self.events`:
udev changes (DeviceEvent), worker reports (WorkerReport) and timer ticks; signal
handlers only set flags. On every device or config change it re-plans and applies
only the difference between the plan and what runs.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from edgetpud import __version__, config, health, placement, threadnames
from edgetpud.config import Config, ModelConfig
from edgetpud.devices.model import DeviceInfo
from edgetpud.errors import ConfigError, ConfigUnreadableError, EdgetpudError, PluginError
from edgetpud.messages import Request, Result
from edgetpud.notify import Notifier
from edgetpud.workers import ModelQueue, Worker, WorkerReport

log = logging.getLogger(__name__)

TICK = 0.05  # seconds between supervisor turns when nothing happens
HEALTH_MIN_GAP = 0.5  # a change publishes health at most this often
STATUS_INTERVAL = 0.5  # how often systemd's STATUS= line is recomputed (it walks every model)
MQTT_PUT_TIMEOUT = 0.0  # MQTT requests never wait for queue room: busy reply instead
SOURCE_PUT_TIMEOUT = 0.2


@dataclass
class DeviceHealth:
    """What the supervisor has learned about one device while using it."""

    quarantined_until: float = 0.0
    quarantines: int = 0
    hung: bool = False
    reason: str = ""

    def blocked(self, now: float) -> bool:
        return self.hung or now < self.quarantined_until


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
    disabled: str = ""  # why it cannot run at all
    waiting_since: float = 0.0  # monotonic time it last lost its last worker (0: it has one)
    no_device: str = ""  # set once it waited waiting_timeout: MQTT requests are refused with it
    errors: int = 0
    results: int = 0

    @property
    def mqtt_fed(self) -> bool:
        """Its requests come over MQTT (its source is the mqtt plugin)."""
        return self.source is not None and self.source.transport == "mqtt"


class Service:
    """edgetpud's daemon. `run()` blocks until stopped; returns the exit code."""

    def __init__(
        self,
        cfg: Config,
        *,
        notifier: Notifier | None = None,
        watcher_factory: Callable[..., Any] | None = None,
        mqtt_factory: Callable[..., Any] | None = None,
        log_level_pinned: bool = False,
    ) -> None:
        self.cfg = cfg
        self.generation = 1
        self.log_level_pinned = log_level_pinned  # --log-level given: reloads keep the level
        self.notifier = notifier or Notifier()
        self.events: queue.Queue[Any] = queue.Queue()
        self._watcher_factory = watcher_factory
        self._mqtt_factory = mqtt_factory
        self.watcher: Any = None
        self.mqtt: Any = None
        self.devices: dict[str, DeviceInfo] = {}
        self.device_health: dict[str, DeviceHealth] = {}
        self.models: dict[str, ModelRuntime] = {}
        self.plan: placement.Plan | None = None
        self.runtime_error = ""
        self.last_reload_error = ""
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.rates = health.RateMeter()
        self._stop_requested = False
        self._reload_requested = False
        self._dump_requested = False
        self._health_dirty = True
        self._last_health = 0.0
        self._last_watchdog = 0.0
        self._last_status = ""
        self._last_status_at = 0.0
        self._fleet_held: set[str] = set()  # full, but the last node taking fleet requests
        self._lock = threading.Lock()  # guards counters touched from worker threads

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
            self.notifier.ready(self._status_line())
            log.info("ready: %s", self._status_line())
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _start(self) -> None:
        self._check_runtime()
        self._start_mqtt()
        self._start_devices()
        for name, mcfg in self.cfg.models.items():
            self._create_model(name, mcfg)
        self._replan("start")
        self._publish_health(force=True)

    def _check_runtime(self) -> None:
        from edgetpud import runtime

        try:
            name = runtime.runtime_name(self.cfg.runtime.runtime)
        except EdgetpudError as exc:
            self.runtime_error = str(exc)
            log.error(
                "no TFLite runtime: %s; serving nothing until one is installed and the "
                "service restarted (systemctl restart edgetpud)",
                exc,
            )
            return
        self.runtime_error = ""
        log.info("TFLite runtime: %s", name)

    def _start_mqtt(self, link: Any = None) -> None:
        self.mqtt = link or self._new_mqtt(self.cfg)
        self.mqtt.start()

    def _new_mqtt(self, cfg: Config) -> Any:
        """A link for `cfg`, not started; raises ConfigUnreadableError for unusable credentials."""
        if self._mqtt_factory is not None:
            factory = self._mqtt_factory
        else:
            from edgetpud.mqtt import MqttLink

            factory = MqttLink
        return factory(
            cfg.mqtt,
            cfg.daemon.node_id,
            on_request=self._on_mqtt_request,
            on_connection=self._on_mqtt_connection,
            fleet_group=cfg.fleet.group,
        )

    def _start_devices(self) -> None:
        if self._watcher_factory is not None:
            factory = self._watcher_factory
        else:
            from edgetpud.devices import DeviceWatcher

            factory = DeviceWatcher
        self.watcher = factory(
            self.cfg.devices,
            self.cfg.daemon.state_dir,
            self.events,
            performance=self.cfg.devices.performance,
        )
        for dev in self.watcher.start():
            self.devices[dev.identity] = dev
        log.info("%d Edge TPU(s) found", len(self.devices))

    def _shutdown(self) -> None:
        """Stop in reverse order; every step is safe if its part never started."""
        # the drain, then up to STOP_MARGIN_S for workers to close, health and "offline"
        self.notifier.stopping(within=self.cfg.daemon.drain_timeout + STOP_MARGIN_S)
        log.info("stopping")
        deadline = time.monotonic() + self.cfg.daemon.drain_timeout
        for rt in self.models.values():
            self._stop_source(rt)
        if self.mqtt is not None:
            self.mqtt.set_models({})  # stop taking requests
        self._drain(deadline)
        for rt in list(self.models.values()):
            for target in list(rt.workers):
                self._stop_worker(rt, target, deadline, requeue=True)
            self._answer_leftovers(rt, "edgetpud is shutting down; request not processed")
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
            busy = any(
                (rt.queue.depth and rt.workers)
                or any(w.stats().in_flight for w in rt.workers.values())
                for rt in self.models.values()
            )
            if not busy:
                return
            self._handle_pending_events()
            time.sleep(TICK)

    # ---- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop_requested:
            try:
                event = self.events.get(timeout=TICK)
            except queue.Empty:
                event = None
            if event is not None:
                self._dispatch(event)
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
            self._dispatch(event)

    def _dispatch(self, event: Any) -> None:
        try:
            if isinstance(event, WorkerReport):
                self._on_worker_report(event)
            elif hasattr(event, "action") and hasattr(event, "device"):
                self._on_device_event(event)
            elif callable(event):
                event()
            else:
                log.warning("unknown event %r", event)
        except Exception:
            log.exception("handling %r failed; carrying on", event)

    def _tick(self) -> None:
        now = time.monotonic()
        replan = False
        for rt in self.models.values():
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
        if self.cfg.fleet.group:
            self._fleet_backpressure()
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
        for name, rt in self.models.items():
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
            answered = self._answer_leftovers(rt, rt.no_device)  # all came over MQTT
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
        for rt in self.models.values():
            for worker in rt.workers.values():
                stats = worker.stats()
                if stats.state == "running" and stats.heartbeat and now - stats.heartbeat > limit:
                    return False
        return True

    def _fleet_backpressure(self) -> None:
        """A full model, or one without a device, stops taking fleet requests until it can.

        The broker then hands the shared subscription's messages to nodes with room,
        instead of this node refusing or dropping them. The link refuses to pause while
        no other online node of the group takes the model's requests (the broker would
        discard them): then this node keeps taking them, queued over the limit (or
        answered no_device).
        """
        for name, rt in self.models.items():
            depth, limit = rt.queue.depth, rt.queue.maxsize
            paused = self.mqtt.fleet_paused(name)
            why = (
                "no device to run on"
                if rt.no_device
                else f"queue full ({depth} waiting, queue_size {limit})"
            )
            if not paused and (depth >= limit or rt.no_device):
                if self.mqtt.pause_fleet(name):
                    self._fleet_held.discard(name)
                    log.info("model %s: %s; pausing fleet requests", name, why)
                elif name not in self._fleet_held:  # "held": say it once per spell
                    self._fleet_held.add(name)
                    log.info(
                        "model %s: %s but no other node of the fleet takes its requests now; "
                        "keeping fleet requests",
                        name,
                        why,
                    )
            elif paused and not rt.no_device and depth <= limit // 2:
                self.mqtt.resume_fleet(name)
                log.info(
                    "model %s: can take requests (%d queued); taking fleet requests again",
                    name,
                    depth,
                )
            if depth < limit and not rt.no_device:
                self._fleet_held.discard(name)

    # ---- devices ---------------------------------------------------------------------

    def _on_device_event(self, event: Any) -> None:
        dev: DeviceInfo = event.device
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
            "device_" + event.action if event.action != "changed" else "device_changed",
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
                    dataclasses.replace(dev, verdict="rejected", reasons=(*dev.reasons, dh.reason))
                )
            else:
                out.append(dev)
        return out

    # ---- models ----------------------------------------------------------------------

    def _create_model(self, name: str, mcfg: ModelConfig) -> ModelRuntime:
        rt = ModelRuntime(name, mcfg, ModelQueue(name, mcfg.queue_size, mcfg.overflow))
        self.models[name] = rt
        self._prepare_model(rt)
        return rt

    def _prepare_model(self, rt: ModelRuntime) -> None:
        """Inspect the model files and build its plugins; on failure, disable it with a reason."""
        from edgetpud import modelfile

        rt.disabled = ""
        mcfg = rt.cfg
        if not mcfg.enabled:
            rt.disabled = "enabled = false in the config"
            return
        if self.runtime_error:
            rt.disabled = self.runtime_error
            return
        try:
            rt.info = modelfile.inspect_model(mcfg.model)
            if mcfg.cpu_model:  # a broken CPU build disables the model now, not at fallback
                modelfile.inspect_model(mcfg.cpu_model)
        except EdgetpudError as exc:
            rt.disabled = str(exc)
            log.error("model %s disabled: %s", rt.name, exc)
            return
        try:
            self._build_plugins(rt)
        except (PluginError, EdgetpudError) as exc:
            rt.disabled = str(exc)
            log.error("model %s disabled: %s", rt.name, exc)

    def _build_plugins(self, rt: ModelRuntime) -> None:
        from edgetpud import plugins, preprocess
        from edgetpud.labels import fit_problem, load_labels, output_classes

        reg = plugins.registry()
        mcfg = rt.cfg
        for table in (mcfg.source, mcfg.postprocess):
            if table.options is None:
                raise PluginError(table.error or f'plugin "{table.type}" is unavailable')
        labels = load_labels(mcfg.labels) if mcfg.labels else None
        info = rt.info
        if labels is not None and info is not None:
            output = getattr(mcfg.postprocess.options, "output", 0)
            classes = output_classes(info, mcfg.postprocess.type, output)
            if problem := fit_problem(labels, classes):
                log.warning("model %s: %s", rt.name, problem)
        post_cls = reg.get("postprocess", mcfg.postprocess.type)
        rt.postprocessor = post_cls(mcfg.postprocess.options, info, labels)  # type: ignore[call-arg]
        src_cls = reg.get("source", mcfg.source.type)
        name = rt.name
        rt.source = src_cls(name, mcfg.source.options, info, lambda req: self._emit(name, req))  # type: ignore[call-arg]
        rt.preprocess = preprocess.make_preprocess(rt.source.resize)

    def _emit(self, model: str, request: Request) -> bool:
        """A source's emit(): queue the request, False when full (the source retries)."""
        rt = self.models.get(model)
        if rt is None:
            return False
        return rt.queue.put(request, timeout=SOURCE_PUT_TIMEOUT)

    def _on_mqtt_request(self, request: Request) -> str | None:
        """Called from the MQTT thread: queue it or say why not. Never blocks."""
        rt = self.models.get(request.model)
        if rt is None:
            return f'unknown model "{request.model}"'
        if rt.disabled:
            return f"model {request.model} is disabled: {rt.disabled}"
        if rt.no_device:
            return rt.no_device
        if request.source == "mqtt-fleet":
            # The broker already gave this one to us: keep it (over the limit, behind the
            # others) rather than refuse or drop it; the tick pauses our fleet subscription
            # so the next go elsewhere.
            rt.queue.put_over_limit(request)
            return None
        if rt.queue.put(request, timeout=MQTT_PUT_TIMEOUT):
            return None
        return f"busy: the queue of model {request.model} is full ({rt.cfg.queue_size} waiting); retry later"

    def _on_mqtt_connection(self, connected: bool) -> None:
        self._health_dirty = True
        if connected:
            self.events.put(lambda: self._publish_health(force=True))

    def _start_source(self, rt: ModelRuntime) -> None:
        if rt.source is not None and not rt.disabled:
            rt.source.start()

    def _stop_source(self, rt: ModelRuntime) -> None:
        if rt.source is not None:
            try:
                rt.source.stop()
            except Exception:
                log.exception("stopping the source of %s failed", rt.name)

    def _mqtt_models(self) -> dict[str, Any]:
        return {
            name: rt.info for name, rt in self.models.items() if not rt.disabled and rt.mqtt_fed
        }

    def _mqtt_unavailable(self) -> dict[str, tuple[str, str]]:
        """Configured models MQTT requests cannot reach: (reason, what the client is told)."""
        node = self.cfg.daemon.node_id
        out: dict[str, tuple[str, str]] = {}
        for name, rt in self.models.items():
            if rt.disabled:
                out[name] = (
                    "model_disabled",
                    f"model {name} is configured on {node} but disabled: {rt.disabled}; "
                    "the operator must fix it (journalctl -u edgetpud says more)",
                )
            elif rt.source is not None and not rt.mqtt_fed:
                out[name] = (
                    "not_mqtt_source",
                    f"model {name} on {node} takes its requests from its "
                    f'"{rt.cfg.source.type}" source, not from MQTT; send requests to a model '
                    f'whose source is mqtt, or set models.{name}.source.type = "mqtt"',
                )
        return out

    # ---- placement -------------------------------------------------------------------

    def _specs(self) -> list[placement.ModelSpec]:
        specs = []
        for name, rt in self.models.items():
            spec = placement.spec_from_config(name, rt.cfg, self.cfg, rt.info)
            if rt.disabled:  # it failed to open or load: say why, not "enabled = false"
                spec = dataclasses.replace(spec, disabled_reason=rt.disabled)
            specs.append(spec)
        return specs

    def _replan(self, why: str) -> None:
        """Plan with the current devices and models and apply only what changed."""
        new = placement.plan(self._planning_devices(), self._specs(), self.plan)
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
        self._apply_plan()
        self._health_dirty = True

    def _apply_plan(self) -> None:
        assert self.plan is not None
        deadline = time.monotonic() + self.cfg.daemon.drain_timeout
        for name, rt in self.models.items():
            p = self.plan.placements.get(name)
            wanted = set(p.targets) if p is not None and not rt.disabled else set()
            for target in list(rt.workers):
                if target not in wanted:
                    self._stop_worker(rt, target, deadline, requeue=True)
            for target in sorted(wanted - set(rt.workers)):
                self._start_worker(rt, target)
            if rt.workers:
                self._start_source(rt)
            elif rt.disabled:
                self._stop_source(rt)
                self._answer_leftovers(rt, f"model {name} is disabled: {rt.disabled}")
        if self.mqtt is not None:
            self.mqtt.set_models(self._mqtt_models(), self._mqtt_unavailable())

    def _start_worker(self, rt: ModelRuntime, target: str) -> None:
        from edgetpud import runtime

        mcfg = rt.cfg
        on_cpu = target == "cpu"
        model_path = mcfg.cpu_model if on_cpu and mcfg.cpu_model else mcfg.model
        performance = mcfg.performance or self.cfg.devices.performance
        rcfg = self.cfg.runtime

        def open_session() -> Any:
            return runtime.open_session(
                model_path,
                target,
                library=rcfg.library,
                performance=performance,
                cpu_threads=rcfg.cpu_threads,
                prefer=rcfg.runtime,
            )

        postprocessor = rt.postprocessor
        source = rt.source

        def postprocess(outputs: Any, request: Request, _info: Any) -> Any:
            return postprocessor.process(outputs, request)

        def on_result(result: Result) -> None:
            self._on_result(rt, source, result)

        assert rt.preprocess is not None
        worker = Worker(
            rt.name,
            target,
            rt.queue,
            open_session,
            rt.preprocess,
            postprocess,
            on_result,
            self.events.put,
            stall_timeout=self.cfg.daemon.stall_timeout,
            interpreters=1 if on_cpu else rcfg.tpu_interpreters,
        )
        rt.workers[target] = worker
        worker.start()
        log.info("model %s: worker started on %s", rt.name, target)

    def _stop_worker(
        self, rt: ModelRuntime, target: str, deadline: float, *, requeue: bool
    ) -> None:
        worker = rt.workers.pop(target, None)
        if worker is None:
            return
        leftovers = worker.stop(deadline)
        for request in reversed(leftovers):
            rt.queue.requeue(request)
        log.info(
            "model %s: worker on %s stopped (%d request(s) handed back)",
            rt.name,
            target,
            len(leftovers),
        )

    def _answer_leftovers(self, rt: ModelRuntime, reason: str) -> int:
        """Answer every queued request of `rt` with the error `reason`; how many there were."""
        requests = rt.queue.drain()
        for request in requests:
            self._on_result(rt, rt.source, Result(request, "", error=reason))
        return len(requests)

    def _on_result(self, rt: ModelRuntime, source: Any, result: Result) -> None:
        """Called from worker threads: publish (waits up to 1 s, and only while a connected
        broker lags behind), then tell the source."""
        with self._lock:
            if result.error:
                rt.errors += 1
            else:
                rt.results += 1
        if self.mqtt is not None:
            self.mqtt.publish_result(result)
        if source is not None:
            try:
                source.completed(result)
            except Exception:
                log.exception("source of %s failed to handle a completed request", rt.name)

    # ---- worker reports --------------------------------------------------------------

    def _on_worker_report(self, report: WorkerReport) -> None:
        rt = self.models.get(report.model)
        device = report.device
        if report.kind == "opened":
            if device != "cpu" and self.watcher is not None:
                self.watcher.forget_bad_port(device)
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
                if self._is_device_fault(report) and self.watcher is not None:
                    self.watcher.learn_bad_port(device, report.error)
                self._quarantine(device, f"could not open an Edge TPU context: {report.error}")
            self._replan(f"open failed on {device}")
        elif report.kind == "invoke_error":
            limit = self.cfg.devices.quarantine_after
            dh = self.device_health.get(device)
            # errors reported after the quarantine began (the worker is still stopping)
            # must not quarantine it again: that would double the backoff at once
            already = dh is not None and dh.blocked(time.monotonic())
            if device != "cpu" and report.consecutive_errors >= limit and not already:
                self._quarantine(
                    device,
                    f"{report.consecutive_errors} consecutive inference errors: {report.error}",
                )
                self._replan(f"{device} quarantined")
        elif report.kind == "stopped":
            self._health_dirty = True

    def _is_device_fault(self, report: WorkerReport) -> bool:
        """Whether the device itself refused (a port worth remembering as bad).

        A missing Edge TPU runtime or a model the runtime cannot prepare fails on every
        port alike: learning the port as bad would send the admin to move a healthy
        accelerator.
        """
        from edgetpud.runtime import DeviceUnavailable

        return isinstance(report.exc, DeviceUnavailable)

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
        reason = (
            f"an inference of model {rt.name} has run longer than stall_timeout "
            f"({self.cfg.daemon.stall_timeout:g} s); the device is treated as hung until it is replugged"
        )
        log.error("worker %s stalled: %s", worker.name, reason)
        if target != "cpu":
            dh = self.device_health.setdefault(target, DeviceHealth())
            dh.hung = True
            dh.reason = f"hung: {reason}"
        self._publish_event("worker_stalled", model=rt.name, device=target, reason=reason)

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
        ):
            link = self._new_mqtt(new)  # before anything changes: unusable files refuse the reload
        self.cfg = new
        if new.daemon.log_level != old.daemon.log_level and not self.log_level_pinned:
            logging.getLogger().setLevel(new.daemon.log_level.upper())
        if link is not None:
            log.info("MQTT settings changed: reconnecting")
            self.mqtt.stop(timeout=2.0)
            self._fleet_held.clear()
            self._start_mqtt(link)
        if new.runtime != old.runtime:
            self._check_runtime()
        deadline = time.monotonic() + new.daemon.drain_timeout
        for name in list(self.models):
            if name not in new.models:
                rt = self.models.pop(name)
                self._stop_source(rt)
                for target in list(rt.workers):
                    self._stop_worker(rt, target, deadline, requeue=True)
                self._answer_leftovers(rt, f"model {name} was removed from the config")
                log.info("model %s removed", name)
        for name, mcfg in new.models.items():
            rt_old = self.models.get(name)
            if rt_old is None:
                self._create_model(name, mcfg)
                log.info("model %s added", name)
            elif (
                mcfg != rt_old.cfg
                or new.runtime != old.runtime
                # the clock its Edge TPU delegate was opened with
                or (not mcfg.performance and new.devices.performance != old.devices.performance)
            ):
                self._restart_model(rt_old, mcfg, deadline)
        if new.devices != old.devices and self.watcher is not None:
            for dev in self.watcher.set_policy(new.devices):
                self.devices[dev.identity] = dev
        if self.plan is not None:  # changed models are placed afresh
            kept = {
                n: p
                for n, p in self.plan.placements.items()
                if n in self.models and self.models[n].workers
            }
            self.plan = dataclasses.replace(self.plan, placements=kept, moves=())
        self._replan("reload")

    def _restart_model(self, rt: ModelRuntime, mcfg: ModelConfig, deadline: float) -> None:
        """A changed model: stop its workers and source, keep its queued requests, rebuild."""
        self._stop_source(rt)
        for target in list(rt.workers):
            self._stop_worker(rt, target, deadline, requeue=True)
        rt.cfg = mcfg
        rt.queue.set_limits(mcfg.queue_size, mcfg.overflow)
        self._prepare_model(rt)
        log.info("model %s changed: restarting it", rt.name)

    # ---- health and events -----------------------------------------------------------

    def _publish_event(self, kind: str, **fields: Any) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_event(
                {"event": kind, "node": self.cfg.daemon.node_id, "time": time.time(), **fields}
            )
        self._health_dirty = True

    def snapshot(self) -> dict[str, Any]:
        return health.snapshot(self)

    def _publish_health(self, force: bool = False) -> None:
        self._last_health = time.monotonic()
        self._health_dirty = False
        if self.mqtt is None:
            return
        try:
            self.mqtt.publish_health(self.snapshot())
        except Exception:
            log.exception("building the health snapshot failed")

    def _status_line(self) -> str:
        return health.status_line(self)

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


# Workers spend most of their time in invoke(), which releases the GIL; a worker thread whose
# invoke returned needs the GIL back soon. CPython's default switch interval (5 ms, about two
# MobileNet inferences) lets a busy Python thread (pre/postprocessing, MQTT) keep it that
# long first. With one interpreter per TPU, 1 ms served 20-60 % more inferences/s with 4
# simulated TPUs on 2 cores; with several (runtime.tpu_interpreters) the next invoke is
# already queued on the device, and 1 ms still measured 0.889 vs 0.822-0.869 of the
# ceiling with two (docs/benchmarks.md).
SWITCH_INTERVAL_S = 0.001
STOP_MARGIN_S = 15.0  # beyond drain_timeout: closing workers, health, "offline"


def run(cfg: Config, *, log_level_pinned: bool = False) -> int:
    """Entry point for `edgetpud run`: build the service, wire signals, run it.

    `log_level_pinned`: --log-level was given, so reloads leave the level alone.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    threadnames.install()
    service = Service(cfg, log_level_pinned=log_level_pinned)
    service.install_signal_handlers()
    log.info("edgetpud %s starting (config %s, node %s)", __version__, cfg.path, cfg.daemon.node_id)
    return service.run()
