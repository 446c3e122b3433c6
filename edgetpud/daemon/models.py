"""The configured models and what runs for each: queue, plugins, workers.

`Models` belongs to the supervisor: every method runs on its thread except
`emit` (source threads) and `_on_result` (worker threads), which only put on a
queue or count under a lock. Requests from paho's thread go through `intake`,
which reads only the table `publish_intake` last published.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgetpud import modelfile, pipeline, placement, plugins, preprocess, scheduler
from edgetpud.config import Config, ModelConfig
from edgetpud.daemon.intake import Entry, Intake
from edgetpud.daemon.ports import Link, Runtime
from edgetpud.daemon.state import ModelRuntime
from edgetpud.errors import EdgetpudError, PluginError
from edgetpud.labels import fit_problem, load_labels, output_classes
from edgetpud.messages import Request, Result
from edgetpud.policy import admission
from edgetpud.workers import ModelQueue, Session, Worker, WorkerReport

log = logging.getLogger(__name__)

SOURCE_PUT_TIMEOUT = 0.2


class Models:
    """name → ModelRuntime, and the starting and stopping of their parts."""

    def __init__(
        self,
        cfg: Config,
        runtime: Runtime,
        on_report: Callable[[WorkerReport], None],
        intake: Intake,
        result_observers: Sequence[Callable[[Result], None]] = (),
    ) -> None:
        self.cfg = cfg  # the supervisor replaces it on reload
        self.runtime = runtime
        self.runtime_error = ""  # set by the supervisor: every model is disabled with it
        self.link: Link | None = None  # set by the supervisor
        self.by_name: dict[str, ModelRuntime] = {}
        self.clocks: dict[str, str] = {}  # device -> clock its delegate opens with
        self.intake = intake
        self._published: dict[str, Entry] = {}
        self._on_report = on_report
        self._observers = tuple(result_observers)

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    # ---- building --------------------------------------------------------------------

    def create(self, name: str, mcfg: ModelConfig) -> ModelRuntime:
        rt = ModelRuntime(name, mcfg, ModelQueue(name, mcfg.queue_size, mcfg.overflow))
        self.by_name[name] = rt
        self.prepare(rt)
        return rt

    def prepare(self, rt: ModelRuntime) -> None:
        """Inspect the model files and build its plugins; on failure, disable it with a reason."""
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
            if mcfg.segments:  # a pipeline: segment 0's inputs, the last segment's outputs
                last = [modelfile.inspect_model(s) for s in mcfg.segments[1:]][-1:]
                if last:
                    rt.info = dataclasses.replace(rt.info, outputs=last[0].outputs)
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
        rt.source = src_cls(name, mcfg.source.options, info, lambda req: self.emit(name, req))  # type: ignore[call-arg]
        rt.preprocess = preprocess.make_preprocess(
            rt.source.resize, self.cfg.daemon.max_decode_bytes
        )

    def restart(self, rt: ModelRuntime, mcfg: ModelConfig, deadline: float) -> None:
        """A changed model: stop its workers and source, keep its queued requests, rebuild."""
        self.stop_source(rt)
        for target in list(rt.workers):
            self.stop_worker(rt, target, deadline, requeue=True)
        rt.cfg = mcfg
        rt.queue.set_limits(mcfg.queue_size, mcfg.overflow)
        self.prepare(rt)
        log.info("model %s changed: restarting it", rt.name)

    def remove(self, name: str, deadline: float) -> None:
        rt = self.by_name.pop(name)
        self.publish_intake()  # no new request for it before its queue is answered
        self.stop_source(rt)
        for target in list(rt.workers):
            self.stop_worker(rt, target, deadline, requeue=True)
        self.answer_leftovers(rt, f"model {name} was removed from the config")
        log.info("model %s removed", name)

    # ---- requests in -----------------------------------------------------------------

    def emit(self, model: str, request: Request) -> bool:
        """A source's emit(): queue the request, False when full (the source retries)."""
        rt = self.by_name.get(model)
        if rt is None:
            return False
        return rt.queue.put(request, timeout=SOURCE_PUT_TIMEOUT)

    def publish_intake(self) -> None:
        """Publish what admission needs of every model, if it changed (supervisor thread)."""
        table = {
            name: Entry(admission.Door(rt.disabled, rt.no_device, rt.cfg.queue_size), rt.queue)
            for name, rt in self.by_name.items()
        }
        if table != self._published:
            self.intake.publish(table)
            self._published = table

    # ---- sources ---------------------------------------------------------------------

    def start_source(self, rt: ModelRuntime) -> None:
        if rt.source is not None and not rt.disabled:
            rt.source.start()

    def stop_source(self, rt: ModelRuntime) -> None:
        if rt.source is not None:
            try:
                rt.source.stop()
            except Exception:
                log.exception("stopping the source of %s failed", rt.name)

    # ---- what the link and placement see ---------------------------------------------

    def mqtt_models(self) -> dict[str, Any]:
        return {
            name: rt.info for name, rt in self.by_name.items() if not rt.disabled and rt.mqtt_fed
        }

    def mqtt_unavailable(self) -> dict[str, tuple[str, str]]:
        """Configured models MQTT requests cannot reach: (reason, what the client is told)."""
        node = self.cfg.daemon.node_id
        out: dict[str, tuple[str, str]] = {}
        for name, rt in self.by_name.items():
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

    def specs(self) -> list[placement.ModelSpec]:
        specs = []
        for name, rt in self.by_name.items():
            spec = placement.spec_from_config(name, rt.cfg, self.cfg, rt.info)
            if rt.disabled:  # it failed to open or load: say why, not "enabled = false"
                spec = dataclasses.replace(spec, disabled_reason=rt.disabled)
            specs.append(spec)
        return specs

    # ---- workers ---------------------------------------------------------------------

    def apply(self, plan: placement.Plan) -> None:
        """Start and stop workers so that each model runs where `plan` puts it."""
        deadline = time.monotonic() + self.cfg.daemon.drain_timeout
        self.clocks = self._clocks(plan)
        for name, rt in self.by_name.items():
            p = plan.placements.get(name)
            wanted = set(p.targets) if p is not None and not rt.disabled else set()
            if rt.cfg.segments and wanted and "cpu" not in wanted:
                # a pipeline: one worker over all its stages' devices, in stage order
                assert p is not None
                wanted = {pipeline.TARGET_SEPARATOR.join(p.targets)}
            for target in list(rt.workers):
                if target not in wanted:
                    self.stop_worker(rt, target, deadline, requeue=True)
            for target in sorted(wanted - set(rt.workers)):
                self.start_worker(rt, target)
            if rt.workers:
                self.start_source(rt)
            elif rt.disabled:
                self.stop_source(rt)
                self.answer_leftovers(rt, f"model {name} is disabled: {rt.disabled}")
        self.publish_intake()
        if self.link is not None:
            self.link.set_models(self.mqtt_models(), self.mqtt_unavailable())

    def _clocks(self, plan: placement.Plan) -> dict[str, str]:
        """Device -> the clock its delegate opens with: "max" when any model the plan puts
        there wants it. The clock belongs to the device, not the model: libedgetpu gives a
        second open of a device the context of the first, whatever its options."""
        clocks: dict[str, str] = {}
        for name, p in plan.placements.items():
            rt = self.by_name.get(name)
            if rt is None or rt.disabled:
                continue
            wanted = rt.cfg.performance or self.cfg.devices.performance
            for target in p.targets:
                if wanted == "max" or target not in clocks:
                    clocks[target] = wanted
        for target in list(clocks):
            for part in target.split(pipeline.TARGET_SEPARATOR)[1:]:
                clocks.setdefault(part, clocks[target])
        return clocks

    def start_worker(self, rt: ModelRuntime, target: str) -> None:
        mcfg = rt.cfg
        on_cpu = target == "cpu"
        model_path = mcfg.cpu_model if on_cpu and mcfg.cpu_model else mcfg.model
        own = mcfg.performance or self.cfg.devices.performance
        performance = self.clocks.get(target, own)
        rcfg = self.cfg.runtime
        runtime = self.runtime

        def open_session() -> Session:
            return runtime.open(model_path, target, rcfg, performance)

        if pipeline.TARGET_SEPARATOR in target or (mcfg.segments and not on_cpu):
            clocks = self.clocks

            def open_segment(path: Any, device: str) -> Session:
                session = runtime.open(path, device, rcfg, clocks.get(device, own))
                # a stage's device may be shared with other models: its turn by token
                key = scheduler.key_for(session.info, f"{rt.name}/{Path(path).name}")
                gate = scheduler.GATES.get(device)
                return scheduler.GatedSession(session, gate, key, mcfg.max_batch_wait)

            devices = target.split(pipeline.TARGET_SEPARATOR)
            shared = pipeline.SharedPipeline(
                lambda: pipeline.open_pipeline(list(mcfg.segments), devices, open_segment)
            )
            rt.pipelines[target] = shared
            open_session = shared.open

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
            self._on_report,
            stall_timeout=self.cfg.daemon.stall_timeout,
            interpreters=1 if on_cpu else rcfg.tpu_interpreters,
            batch_wait=rt.cfg.max_batch_wait,
        )
        rt.workers[target] = worker
        worker.start()
        log.info("model %s: worker started on %s", rt.name, target)

    def stop_worker(self, rt: ModelRuntime, target: str, deadline: float, *, requeue: bool) -> None:
        rt.pipelines.pop(target, None)
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

    def busy(self) -> bool:
        """Requests are queued for a model that has workers, or one is in flight."""
        return any(
            (rt.queue.depth and rt.workers) or any(w.stats().in_flight for w in rt.workers.values())
            for rt in self.by_name.values()
        )

    def stop_all(self, deadline: float, reason: str) -> None:
        """Stop every worker (handing back what it holds), then answer what is queued."""
        for rt in list(self.by_name.values()):
            for target in list(rt.workers):
                self.stop_worker(rt, target, deadline, requeue=True)
            self.answer_leftovers(rt, reason)

    # ---- results out -----------------------------------------------------------------

    def answer_leftovers(self, rt: ModelRuntime, reason: str) -> int:
        """Answer every queued request of `rt` with the error `reason`; how many there were."""
        requests = rt.queue.drain()
        for request in requests:
            self._on_result(rt, rt.source, Result(request, "", error=reason))
        return len(requests)

    def _on_result(self, rt: ModelRuntime, source: Any, result: Result) -> None:
        """Called from worker threads: publish (waits up to 1 s, and only while a connected
        broker lags behind), then tell the source."""
        with rt.lock:
            if not result.error:
                rt.results += 1
            elif not result.expired:  # not run: its client (Frigate) had given up
                rt.errors += 1
        reply = result.request.reply
        if reply is not None:  # the Frigate endpoint's request: answered there, not on MQTT
            try:
                reply(result)
            except Exception:
                log.exception("the reply to request %s of %s failed", result.request.id, rt.name)
            for observe in self._observers:
                try:
                    observe(result)
                except Exception:
                    log.exception("a result observer failed on a result of %s", rt.name)
            return
        link = self.link
        if link is not None:
            link.publish_result(result)
        for observe in self._observers:
            try:
                observe(result)
            except Exception:
                log.exception("a result observer failed on a result of %s", rt.name)
        if source is not None:
            try:
                source.completed(result)
            except Exception:
                log.exception("source of %s failed to handle a completed request", rt.name)
