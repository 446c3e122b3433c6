"""Devices, what using them taught, and the plan: the supervisor's placement half.

`Placer` belongs to the supervisor and runs only on its thread. It keeps the
device records, their trust (policy.trust) and the current plan, reacts to
device events, worker reports and stalls, and re-plans (placement.plan) and
applies the difference through `Models`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace as dataclass_replace

from edgetpud import pipeline, placement
from edgetpud.daemon import events as ev
from edgetpud.daemon.models import Models
from edgetpud.daemon.ports import Runtime, Watcher
from edgetpud.daemon.state import ModelRuntime
from edgetpud.devices import thermal
from edgetpud.devices.model import DeviceInfo
from edgetpud.policy import trust
from edgetpud.workers import Worker, WorkerReport

log = logging.getLogger(__name__)

# the worker reports that change a device's trust, its learned port or the plan: taken
# only from the worker that runs on that device now
JUDGED_REPORTS = frozenset({"opened", "open_failed", "invoke_error"})


class Placer:
    """Device records, device trust and the plan (supervisor thread only)."""

    def __init__(
        self,
        models: Models,
        runtime: Runtime,
        publish: Callable[..., None],
        touch: Callable[[], None],
    ) -> None:
        self.models = models
        self.runtime = runtime
        self.watcher: Watcher | None = None  # set by the supervisor once started
        self.devices: dict[str, DeviceInfo] = {}
        self.trust: dict[str, trust.Trust] = {}
        self.plan: placement.Plan | None = None
        self._publish = publish  # (kind, **fields): an event on …/events
        self._touch = touch  # health changed

    def tick(self, now: float) -> None:
        """Stalled workers and ended quarantines; re-plan if either changed anything."""
        replan = False
        for rt in self.models:
            for target, worker in list(rt.workers.items()):
                if worker.check_stall(now):
                    self.on_stall(rt, target, worker)
                    replan = True
        for identity in trust.quarantines_over(self.trust, now):
            log.info("%s: quarantine over, trying it again", identity)
            self.trust[identity] = trust.release(self.trust[identity])
            replan = True
        if replan:
            self.replan("device health changed")

    def forget_placements_of_stopped(self) -> None:
        """After a reload: models without workers (changed ones) are placed afresh."""
        if self.plan is None:
            return
        kept = {
            n: p
            for n, p in self.plan.placements.items()
            if n in self.models.by_name and self.models.by_name[n].workers
        }
        self.plan = dataclass_replace(self.plan, placements=kept, moves=())

    # ---- devices ---------------------------------------------------------------------

    def on_device_event(self, event: ev.DeviceChanged) -> None:
        dev = event.device
        before = self.devices.get(dev.identity)
        if event.action == "changed" and before is not None and thermal.reading_only(before, dev):
            self.devices[dev.identity] = dev  # a new temperature reading: health shows it
            return
        crossed = thermal.crossing(before, dev) if event.action != "removed" else None
        if crossed is not None:
            self._publish("device_thermal", **crossed)
        log.info(
            "device %s %s (%s: %s)",
            dev.identity,
            event.action,
            dev.verdict,
            "; ".join(dev.reasons) or "ok",
        )
        if event.action == "removed":
            self.devices.pop(dev.identity, None)
        else:
            self.devices[dev.identity] = dev
        if trust.on_device_change(event.action):  # a replug clears hung/quarantine
            self.trust.pop(dev.identity, None)
            self.runtime.replugged(dev.identity)  # and its hosts' deaths
        self._publish(
            "device_" + event.action,
            device=dev.identity,
            state=dev.state,
            verdict=dev.verdict,
            reasons=list(dev.reasons),
        )
        if event.action == "added" and dev.verdict == "rejected":
            self._publish("device_rejected", device=dev.identity, reasons=list(dev.reasons))
        self.replan(f"device {dev.identity} {event.action}")

    # ---- worker reports --------------------------------------------------------------

    def on_worker_report(self, report: WorkerReport) -> None:
        rt = self.models.by_name.get(report.model)
        device = report.device
        current = rt.workers.get(device) if rt is not None else None
        retired = current is None or current.serial != report.serial
        if retired and report.kind in JUDGED_REPORTS:
            # Reports queue up behind re-plans: a worker this placer already stopped (its
            # device unplugged, the model moved) may still report that reopening failed.
            # Acting on it would quarantine the model's new devices and re-plan again.
            # (A host's death is still told: it happened, whoever's worker saw it.)
            log.info(
                "model %s: ignored %s from a worker already retired from %s: %s",
                report.model,
                report.kind,
                device,
                report.error or "-",
            )
            return
        # a pipelined model's worker runs on all its stages' devices ("usb:2-1+usb:2-2"):
        # what happens to it happens to each of them
        parts = device.split(pipeline.TARGET_SEPARATOR)
        if report.kind == "opened":
            if device != trust.CPU and self.watcher is not None:
                for part in parts:
                    self.watcher.forget_bad_port(part)
            self._touch()
        elif report.kind == "open_failed":
            log.error("model %s could not open on %s: %s", report.model, device, report.error)
            self._publish("open_failed", model=report.model, device=device, error=report.error)
            if rt is not None:
                rt.workers.pop(device, None)
            refused = self.runtime.is_device_fault(report.exc) and len(parts) == 1
            failure = trust.after_open_failed(device, refused)
            if failure.disable_model and rt is not None:
                rt.disabled = report.error
            if failure.learn_bad_port and self.watcher is not None:
                self.watcher.learn_bad_port(device, report.error)
            if failure.quarantine:
                for part in parts:
                    self._quarantine(part, f"could not open an Edge TPU context: {report.error}")
            self.replan(f"open failed on {device}")
        elif report.kind == "invoke_error":
            if trust.after_invoke_errors(
                self.trust.get(parts[0]),
                device,
                report.consecutive_errors,
                self.models.cfg.devices.quarantine_after,
                time.monotonic(),
            ):
                for part in parts:
                    self._quarantine(
                        part,
                        f"{report.consecutive_errors} consecutive inference errors: {report.error}",
                    )
                self.replan(f"{device} quarantined")
        elif report.kind == "host_lost":
            # the worker hands its requests back and reopens in a restarted host by itself
            self._publish("host_died", model=report.model, device=device, reason=report.error)
            self._touch()
        elif report.kind == "stopped":
            self._touch()

    def _quarantine(self, identity: str, reason: str) -> None:
        now = time.monotonic()
        t = trust.quarantine(
            self.trust.get(identity), now, self.models.cfg.devices.quarantine_backoff, reason
        )
        self.trust[identity] = t
        log.warning("%s %s", identity, t.reason)
        self._publish(
            "device_quarantined",
            device=identity,
            reason=t.reason,
            retry_in_s=trust.backoff_of(t, now),
        )

    def on_stall(self, rt: ModelRuntime, target: str, worker: Worker) -> None:
        rt.workers.pop(target, None)
        stalled = (
            f"an inference of model {rt.name} has run longer than stall_timeout "
            f"({self.models.cfg.daemon.stall_timeout:g} s)"
        )
        # Its device host is killed and the device reset (edgetpud/hosts); it is quarantined
        # meanwhile, so the model is served elsewhere, and opened again when the quarantine
        # ends: no replug. Only a device whose host could not be reached (none running) is
        # treated as hung until it is replugged. A pipelined model's worker runs on each of
        # its stages' devices (usb:2-1+usb:2-2): each is recovered.
        parts = target.split(pipeline.TARGET_SEPARATOR)
        recovered = [self.runtime.recover(part, stalled) for part in parts]
        if target != trust.CPU and all(recovered):
            reason = f"{stalled}; its host was killed and the device is being reset"
            log.error("worker %s stalled: %s", worker.name, reason)
            for part in parts:
                self._quarantine(part, f"wedged: {reason}")
        elif target == trust.CPU:
            reason = f"{stalled}; the CPU host was killed and is restarted"
            log.error("worker %s stalled: %s", worker.name, reason)
        else:
            reason = f"{stalled}; the device is treated as hung until it is replugged"
            log.error("worker %s stalled: %s", worker.name, reason)
            for part in parts:
                self.trust[part] = trust.hang(self.trust.get(part), reason)
        self._publish("worker_stalled", model=rt.name, device=target, reason=reason)

    # ---- placement -------------------------------------------------------------------

    def replan(self, why: str) -> None:
        """Plan with the current devices and models and apply only what changed."""
        seen = trust.planning_devices(self.devices.values(), self.trust, time.monotonic())
        new = placement.plan(seen, self.models.specs(), self.plan)
        for move in new.moves:
            log.info(
                "model %s: %s -> %s (%s)",
                move.model,
                list(move.before) or "-",
                list(move.after) or "-",
                move.reason,
            )
            self._publish(
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
        self._touch()
