"""What the real libedgetpu does to a device host, under load on 2 accelerators with 2 models.

The fake libedgetpu fails the way libedgetpu does (docs/testing.md): it aborts the process
on a failed USB transfer (`abort_invoke`) and when its device is unplugged during an
invoke, blocks an invoke for ever (`wedge`), and refuses a device another process holds.
Each test runs the daemon as a subprocess with a real mosquitto, sends 200 requests to
each model while the fault happens, and checks what a user would: the daemon is still
the same process, every request is answered exactly once with a result, the other model
carried on on its device, and the faulty device serves again without a replug where the
fault allows it (abort, kill, wedge).
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_service import THREE_MODELS, Rig, config_text, usb_root
from tests.support.daemon import Daemon
from tests.support.fakelib import held_elsewhere
from tests.support.faults import fault_rig
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

TWO_MODELS = THREE_MODELS.split("[models.gamma]")[0]
MODELS = ("alpha", "beta")
PER_MODEL = 200


def start(rig: Rig, *, backoff: str = "2s") -> Daemon:
    """The daemon with the two models, devices quarantined for `backoff` after a fault."""
    text = config_text(
        rig.tmp, rig.broker.port, rig.models_dir, rig.fake_lib, models=TWO_MODELS
    ).replace('quarantine_backoff = "60s"', f'quarantine_backoff = "{backoff}"')
    d = Daemon(rig.tmp / f"daemon{len(rig.daemons)}", text, env=rig.control.env())
    rig.daemons.append(d)
    d.start()
    d.wait_ready()
    return d


def two_accelerators(rig: Rig, bed: dict[str, str] | None = None) -> None:
    """usb:2-1 and usb:2-2 on a root hub; `bed` gets "root" and each identity's sysfs path."""
    root = usb_root(rig.tb)
    paths = {f"usb:2-{n}": rig.tb.add_accelerator(root, n) for n in (1, 2)}
    if bed is not None:
        bed.update(paths, root=root)


def on_own_devices(rig: Rig) -> dict[str, str]:
    """Wait until alpha and beta each run on an accelerator of their own; model -> device."""

    def placed() -> dict[str, str] | None:
        where = {m: rig.placement(m) for m in MODELS}
        own = all(len(w) == 1 and w[0].startswith("usb:") for w in where.values())
        if own and where["alpha"] != where["beta"]:
            return {m: w[0] for m, w in where.items()}
        return None

    found: dict[str, str] = wait_for(placed, 60, "alpha and beta on an accelerator each")
    return found


@contextmanager
def load(rig: Rig, tag: str, *, burst: bool = False) -> Iterator[dict[str, list[str]]]:
    """PER_MODEL requests to each model, about 100/s (`burst`: all at once), from a thread;
    joined on exit."""
    ids = {m: [f"{tag}-{m}-{i}" for i in range(PER_MODEL)] for m in MODELS}

    def send() -> None:
        for i in range(PER_MODEL):
            for m in MODELS:
                rig.send(m, [ids[m][i]])
            if not burst:
                time.sleep(0.01)

    sender = threading.Thread(target=send, name="test:load")
    sender.start()
    try:
        yield ids
    finally:
        sender.join(120)


def answered_once(rig: Rig, ids: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Wait for every request's result; assert each came exactly once and without error."""
    for m, want in ids.items():
        wait_for(lambda m=m, w=want: len(rig.answered(m)) >= len(w), 120, f"every {m} result")
    time.sleep(1.0)  # a duplicate would arrive right behind
    out = {}
    for m, want in ids.items():
        results = [r for r in rig.results(m) if r["request_id"] in set(want)]
        counts = collections.Counter(r["request_id"] for r in results)
        assert set(counts) == set(want), f"{m}: {len(set(want) - set(counts))} never answered"
        twice = [rid for rid, n in counts.items() if n > 1]
        assert not twice, f"{m}: answered more than once: {twice[:5]}"
        errors = [r["error"] for r in results if "error" in r]
        assert not errors, f"{m}: {len(errors)} error results, the first: {errors[0]}"
        out[m] = results
    return out


def hosts(rig: Rig) -> dict[str, dict[str, Any]]:
    section: dict[str, dict[str, Any]] = rig.health().get("hosts", {})
    return section


def host_pid(rig: Rig, device: str) -> int:
    pid: int = wait_for(lambda: hosts(rig).get(device, {}).get("pid"), 30, f"a host for {device}")
    return pid


def serves_again(rig: Rig, model: str, device: str, since: float, tag: str) -> None:
    """`model` answers from `device` again: a request sent now gets its result from there."""
    probe = [f"{tag}-again-{i}" for i in range(20)]

    def back() -> bool:
        return device in rig.placement(model)

    wait_for(back, 60, f"{model} placed on {device} again")
    rig.send(model, probe)
    wait_for(lambda: all(p in rig.answered(model) for p in probe), 60, "the probe answered")
    assert any(rig.answered(model)[p]["device"] == device for p in probe), [
        rig.answered(model)[p]["device"] for p in probe
    ]


def undisturbed(rig: Rig, results: list[dict[str, Any]], device: str, pid: int) -> None:
    """The other model: all its results from its own device, its host never restarted."""
    assert {r["device"] for r in results} == {device}
    assert hosts(rig)[device]["pid"] == pid
    assert hosts(rig)[device]["deaths"] == 0


def same_daemon(d: Daemon, pid: int) -> None:
    assert d.proc is not None and d.proc.poll() is None and d.proc.pid == pid


def run_fault(
    tmp_path: Path,
    models_dir: Path,
    fake_lib: Path,
    fault: Callable[[Rig, str, str], None],
    check: Callable[[Rig, str, str, float], None],
    *,
    bed: dict[str, str] | None = None,
    invoke_ms: float = 5,
    burst: bool = False,
) -> None:
    """Start, load both models, inject `fault(rig, device, port)` into beta's device while
    its requests run, and check the four things every host fault must keep."""
    with fault_rig(tmp_path, models_dir, fake_lib, invoke_ms=invoke_ms) as rig:
        two_accelerators(rig, bed)
        d = start(rig)
        assert d.proc is not None
        daemon_pid = d.proc.pid
        where = on_own_devices(rig)
        other_pid = host_pid(rig, where["alpha"])
        faulty = where["beta"]
        with load(rig, "f", burst=burst) as ids:
            wait_for(lambda: len(rig.answered("beta")) >= 30, 60, "beta under load")
            at = time.monotonic()
            fault(rig, faulty, faulty.split(":", 1)[1])
        results = answered_once(rig, ids)
        same_daemon(d, daemon_pid)
        undisturbed(rig, results["alpha"], where["alpha"], other_pid)
        check(rig, faulty, where["alpha"], at)
        same_daemon(d, daemon_pid)
        rig.control.set(abort_invoke=None, wedge=None, once=None)
        assert d.stop() == 0


def host_died_event(rig: Rig, device: str) -> dict[str, Any]:
    event: dict[str, Any] = wait_for(
        lambda: next((e for e in rig.events("host_died") if e["device"] == device), None),
        30,
        f"a host_died event for {device}",
    )
    return event


@pytest.mark.timeout(240)
def test_an_abort_during_an_invoke_costs_a_host_restart_only(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    def fault(rig: Rig, device: str, port: str) -> None:
        rig.control.set(abort_invoke=port, once=1)
        wait_for(lambda: rig.control.fired("abort_invoke", port), 30, "the abort")

    def check(rig: Rig, device: str, other: str, at: float) -> None:
        event = host_died_event(rig, device)
        # the reason names the host, how it ended and libedgetpu's last words
        assert event["reason"].startswith(f"host for {device} aborted: ")
        assert "usb_driver.cc" in event["reason"] and "transfer in failed" in event["reason"]
        restarted = wait_for(
            lambda: (h := hosts(rig).get(device, {})).get("restarts", 0) >= 1 and h,
            30,
            "health showing the host restarted",
        )
        assert restarted["last_exit"].startswith("aborted: ")
        serves_again(rig, "beta", device, at, "abort")

    run_fault(tmp_path, models_dir, fake_lib, fault, check)


@pytest.mark.timeout(240)
def test_a_host_killed_with_sigkill_is_restarted(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    killed: list[int] = []

    def fault(rig: Rig, device: str, port: str) -> None:
        killed.append(host_pid(rig, device))
        os.kill(killed[0], signal.SIGKILL)  # what the kernel's OOM killer does

    def check(rig: Rig, device: str, other: str, at: float) -> None:
        event = host_died_event(rig, device)
        assert event["reason"].startswith(f"host for {device} was killed (SIGKILL")
        assert host_pid(rig, device) != killed[0]
        serves_again(rig, "beta", device, at, "kill")

    run_fault(tmp_path, models_dir, fake_lib, fault, check)


@pytest.mark.timeout(240)
def test_a_wedged_invoke_kills_the_host_and_the_device_serves_again_without_a_replug(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    wedged: list[int] = []

    def fault(rig: Rig, device: str, port: str) -> None:
        wedged.append(host_pid(rig, device))
        rig.control.set(wedge=port, once=1)
        wait_for(lambda: rig.events("worker_stalled"), 60, "the stall detected")

    def check(rig: Rig, device: str, other: str, at: float) -> None:
        port = device.split(":", 1)[1]
        # the fake wedged one invoke, in beta's host, and that host is gone (killed: a
        # wedged libedgetpu never returns, only the process's death frees the device)
        assert rig.control.events() == [("wedge", port, wedged[0])]
        wait_for(lambda: not Path(f"/proc/{wedged[0]}").exists(), 30, "the wedged host gone")
        (stalled,) = rig.events("worker_stalled")
        assert (stalled["device"], stalled["model"]) == (device, "beta")
        assert "its host was killed" in stalled["reason"]
        last_exit = wait_for(
            lambda: hosts(rig).get(device, {}).get("last_exit"), 30, "the host's exit in health"
        )
        assert "killed by edgetpud" in last_exit
        # quarantined while it is reset, with the stall as the reason
        quarantined = [e for e in rig.events("device_quarantined") if e["device"] == device]
        assert quarantined, "no device_quarantined event"
        assert quarantined[0]["reason"].startswith("quarantined for 2 s: wedged: an inference")
        # re-admitted after the 2 s quarantine: a fresh host on the same device serves beta,
        # and with once=1 its invokes no longer wedge (no second wedge fired)
        serves_again(rig, "beta", device, at, "wedge")
        fresh = host_pid(rig, device)
        assert fresh != wedged[0]
        # the device was reset (USBDEVFS_RESET on its /dev/bus/usb node) before that host
        # opened it
        log = rig.daemons[-1].log()
        reset = log.find(f"{device}: reset {device} (USBDEVFS_RESET on /dev/bus/usb/")
        opened = log.find(f"host for {device} started (pid {fresh},")
        assert 0 <= reset < opened, (reset, opened)
        assert rig.control.events() == [("wedge", port, wedged[0])]

    run_fault(tmp_path, models_dir, fake_lib, fault, check)


@pytest.mark.timeout(240)
def test_an_unplug_during_an_invoke_moves_the_model_and_a_replug_brings_it_back(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    bed: dict[str, str] = {}

    def fault(rig: Rig, device: str, port: str) -> None:
        rig.tb.unplug(bed[device])
        wait_for(rig.control.events, 30, "the unplug abort")

    def check(rig: Rig, device: str, other: str, at: float) -> None:
        assert [key for key, _, _ in rig.control.events()] == ["unplug_abort"]
        event = host_died_event(rig, device)
        assert event["reason"].startswith(f"host for {device} aborted: ")
        # while it was away beta was served by alpha's accelerator or the CPU (every
        # request answered, checked above); a replug brings it back
        rig.tb.add_accelerator(bed["root"], int(device.rsplit("-", 1)[1]))
        serves_again(rig, "beta", device, at, "replug")

    # All requests at once and 20 ms invokes: beta's device has a queue to work off for
    # seconds, so the unplug always catches an invoke (the fake aborts only a process with
    # an invoke running or starting after the unplug, as libedgetpu). At 100/s on a loaded
    # box the device can be idle at that moment, and the daemon then stops the worker
    # before anything touches the device: no abort, which is right but not this test.
    run_fault(tmp_path, models_dir, fake_lib, fault, check, bed=bed, invoke_ms=20, burst=True)


@pytest.mark.timeout(240)
def test_a_device_busy_in_another_process_is_left_alone_and_its_model_served_elsewhere(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    with fault_rig(tmp_path, models_dir, fake_lib, invoke_ms=5) as rig:
        two_accelerators(rig)
        with held_elsewhere(fake_lib, "2-2") as holder:
            d = start(rig, backoff="60s")
            assert d.proc is not None
            daemon_pid = d.proc.pid
            wait_for(lambda: all(rig.placement(m) for m in MODELS), 60, "both models placed")
            wait_for(
                lambda: rig.events("open_failed") or rig.events("device_quarantined"),
                60,
                "the busy device refused",
            )
            with load(rig, "busy") as ids:
                pass
            results = answered_once(rig, ids)
            same_daemon(d, daemon_pid)
            served_by = {r["device"] for m in MODELS for r in results[m]}
            assert "usb:2-2" not in served_by
            refused = rig.events("open_failed")[0]
            assert refused["device"] == "usb:2-2"
            assert f"pid {holder.pid}" in refused["error"] or "busy" in refused["error"]
            devices = {x["identity"]: x for x in rig.health()["devices"]}
            # busy is not the port's fault: nothing learned about 2-2 as a bad port
            assert "bad port" not in str(devices["usb:2-2"]).lower()
        assert d.stop() == 0
