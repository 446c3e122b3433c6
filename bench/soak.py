#!/usr/bin/env python3
"""Soak: the real daemon under steady load for a long time, through broker kills and replugs.

Runs `edgetpud run` as a subprocess the way the fault tests do (tests/support/faults.py):
a umockdev testbed with two USB accelerators and one PCIe module, the fake libedgetpu in
simulate mode, a real mosquitto with persistence and a persistent subscriber session. A
sender publishes requests for three models at a steady rate; every `--broker-every`
seconds the broker is SIGKILLed and restarted (requests pause while it is away, results
keep coming into the daemon's backlog); every `--replug-every` seconds a random
accelerator is unplugged and replugged (every third time in firmware-download mode,
then loaded); every `--abort-every` seconds libedgetpu's abort on a failed USB transfer
hits a random accelerator's device host during an invoke, and every `--wedge-every`
seconds an invoke on one wedges for ever (its host is killed, the device reset and
quarantined, then reopened). At the end every request must be answered, and once the
daemon has stopped no device host may be left running.

    make soak                      # 10 minutes
    make soak SOAK_SECONDS=120     # or: umockdev-wrapper .venv/bin/python -m bench.soak --seconds 120

Writes bench/results/soak.json: requests sent, results received, lost, errors, broker
restarts survived, replug cycles, and the daemon's RSS and open file descriptors at
start (after `--warmup` seconds of load, default 60) and end, read from /proc/<pid>/status and /proc/<pid>/fd.
Faults are armed only on an accelerator a model is placed on; each placement change is
printed, and `--daemon-log PATH` keeps the daemon's log to explain them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import ensure_umockdev, processes
from tests.conftest import FAKE_LIB, SHARED_MODELS
from tests.e2e.test_service import BASE, Rig, usb_root
from tests.support.faults import fault_rig, open_fds, rss_kb, threads
from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[1]

MODELS = ("alpha", "beta", "gamma")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    ap.add_argument(
        "--warmup", type=float, default=60.0, help="seconds of load before RSS/fds are sampled"
    )
    ap.add_argument("--rate", type=float, default=30.0, help="requests per second (all models)")
    ap.add_argument("--broker-every", type=float, default=90.0)
    ap.add_argument("--replug-every", type=float, default=35.0)
    ap.add_argument("--abort-every", type=float, default=45.0)
    ap.add_argument("--wedge-every", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    ap.add_argument("--daemon-log", type=Path, help="also keep the daemon's log there")
    args = ap.parse_args()
    ensure_umockdev()
    if not FAKE_LIB.is_file():
        sys.exit(f"{FAKE_LIB} is missing: run `make build/libfake_edgetpu.so`")
    with (
        tempfile.TemporaryDirectory(prefix="edgetpud-soak-") as tmp,
        fault_rig(Path(tmp), SHARED_MODELS, FAKE_LIB, survive_broker_kill=True, invoke_ms=4) as rig,
    ):
        report = soak(rig, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0 if report["lost"] == 0 and not report["host_processes_left_after_stop"] else 1


def daemon_children(pid: int) -> list[int]:
    """Processes still running whose parent was the daemon (device hosts left behind)."""
    return [p for p, fields in processes().items() if int(fields[1]) == pid and fields[0] != "Z"]


def soak(rig: Rig, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    root = usb_root(rig.tb)
    ports = {1: rig.tb.add_accelerator(root, 1), 2: rig.tb.add_accelerator(root, 2)}
    rig.tb.add_apex(0, "0000:03:00.0")
    d = rig.daemon()
    d.wait_ready()
    assert d.proc is not None
    pid = d.proc.pid
    wait_for(lambda: all(rig.placement(m) for m in MODELS), 60, "every model placed")

    sent: dict[str, list[str]] = {m: [] for m in MODELS}
    running = threading.Event()
    running.set()
    done = threading.Event()

    def sender() -> None:
        n = 0
        next_at = time.monotonic()
        while not done.is_set():
            running.wait()
            model = MODELS[n % len(MODELS)]
            rid = f"{model[0]}{n}"
            rig.send(model, [rid])
            sent[model].append(rid)
            n += 1
            next_at += 1 / args.rate
            done.wait(max(0.0, next_at - time.monotonic()))

    def answered_count() -> int:
        return sum(len(rig.answered(m)) for m in MODELS)

    def onlines() -> int:
        return sum(1 for m in rig.sub.on(f"{BASE}/status") if m.payload == b"online")

    t = threading.Thread(target=sender, name="soak:sender", daemon=True)
    t.start()
    wait_for(lambda: answered_count() >= 100, 120, "warm-up: 100 results")
    time.sleep(args.warmup)  # steady state: interpreters built, allocator pools grown
    start = {"rss_kb": rss_kb(pid), "fds": open_fds(pid), "threads": threads(pid)}
    print(f"warm: {start}", flush=True)
    began = time.monotonic()
    deadline = began + args.seconds
    next_broker = began + args.broker_every
    next_replug = began + args.replug_every
    next_abort = began + args.abort_every
    next_wedge = began + args.wedge_every
    restarts = replugs = armed_aborts = armed_wedges = 0
    samples: list[tuple[int, int]] = []  # (seconds, RSS KiB): a step or a slope?
    next_sample = began
    placed: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        now = time.monotonic()
        if (now_placed := {m: rig.placement(m) for m in MODELS}) != placed:
            placed = now_placed
            print(f"{now - began:6.0f} s: placed {placed}", flush=True)
        # the USB accelerators a model is placed on, as health last said
        serving = sorted({d for ds in placed.values() for d in ds if d.startswith("usb:2-")})
        if now >= next_sample:
            samples.append((round(now - began), rss_kb(pid)))
            next_sample += 60
        if now >= next_broker:
            before = onlines()
            running.clear()  # nobody can publish requests to a dead broker
            time.sleep(0.5)
            rig.broker.kill()
            time.sleep(rng.uniform(1.0, 4.0))
            rig.broker.start()
            wait_for(lambda b=before: onlines() > b, 120, "the daemon back online")
            running.set()
            restarts += 1
            next_broker = time.monotonic() + args.broker_every
            print(f"{now - began:6.0f} s: broker restart {restarts} survived", flush=True)
        elif (now >= next_abort or now >= next_wedge) and serving:
            # one fault armed at a time: rearm() lets a once-only fault fire again, so the
            # other key is cleared first (it fires at most once per arming). It goes on an
            # accelerator that serves a model (health's placements): armed on an idle one,
            # no invoke would reach it before the next arming cleared it. While none serves
            # (after a replug, say), the fault waits.
            wedge = now >= next_wedge
            port = rng.choice(serving).removeprefix("usb:")
            rig.control.set(abort_invoke=None, wedge=None)
            rig.control.rearm()
            if wedge:
                rig.control.set(wedge=port, once=1)
                armed_wedges += 1
                next_wedge = time.monotonic() + args.wedge_every
            else:
                rig.control.set(abort_invoke=port, once=1)
                armed_aborts += 1
                next_abort = time.monotonic() + args.abort_every
            # the other fault waits too: armed at once, it would clear this one, or find its
            # accelerator in the quarantine this one puts it in
            next_abort, next_wedge = max(next_abort, now + 20), max(next_wedge, now + 20)
            what = "wedge" if wedge else "abort"
            print(f"{now - began:6.0f} s: {what} armed on usb:{port}", flush=True)
        elif now >= next_replug:
            port = rng.choice([1, 2])
            rig.tb.unplug(ports[port])
            time.sleep(rng.uniform(0.3, 3.0))
            if replugs % 3 == 2:
                dfu = rig.tb.add_accelerator(root, port, state="dfu")
                time.sleep(rng.uniform(0.1, 1.0))
                ports[port] = rig.tb.firmware_load(dfu)
            else:
                ports[port] = rig.tb.add_accelerator(root, port)
            replugs += 1
            next_replug = time.monotonic() + args.replug_every
            print(f"{now - began:6.0f} s: replug {replugs} of usb:2-{port}", flush=True)
        else:
            time.sleep(0.2)
    end = {"rss_kb": rss_kb(pid), "fds": open_fds(pid), "threads": threads(pid)}
    done.set()
    running.set()
    t.join(60)
    total = sum(len(v) for v in sent.values())
    try:
        wait_for(lambda: answered_count() >= total, 180, "every request answered")
    except AssertionError as exc:
        print(exc, flush=True)
    lost = errors = 0
    for m in MODELS:
        answered = rig.answered(m)
        lost += len(set(sent[m]) - set(answered))
        errors += sum(1 for r in answered.values() if "error" in r)
    health = rig.health()
    fired = [key for key, _, _ in rig.control.events()]
    exit_code = d.stop(60)
    if args.daemon_log:
        args.daemon_log.write_text(d.log())
    hosts_left = daemon_children(pid)
    return {
        "seconds": round(time.monotonic() - began, 1),
        "rate_per_s": args.rate,
        "seed": args.seed,
        "warmup_s": args.warmup,
        "requests_sent": total,
        "results_received": answered_count(),
        "lost": lost,
        "error_results": errors,
        "broker_restarts_survived": restarts,
        "replug_cycles": replugs,
        "host_aborts_armed": armed_aborts,
        "host_aborts_fired": fired.count("abort_invoke"),
        "unplug_aborts_fired": fired.count("unplug_abort"),
        "wedges_armed": armed_wedges,
        "wedges_fired": fired.count("wedge"),
        "host_restarts": {d: h.get("restarts", 0) for d, h in health.get("hosts", {}).items()},
        "host_processes_left_after_stop": hosts_left,
        "devices_at_end": {
            dev.get("identity", ""): {
                k: dev.get(k) for k in ("state", "verdict", "reasons", "health")
            }
            for dev in health.get("devices", [])
        },
        "rss_kb_start": start["rss_kb"],
        "rss_kb_end": end["rss_kb"],
        "rss_growth_pct": round(100 * (end["rss_kb"] - start["rss_kb"]) / start["rss_kb"], 2),
        "rss_kb_every_60s": samples,
        "open_fds_start": start["fds"],
        "open_fds_end": end["fds"],
        "threads_start": start["threads"],
        "threads_end": end["threads"],
        "backlog_dropped": health.get("mqtt", {}).get("backlog_dropped"),
        "daemon_exit_code": exit_code,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
    }


if __name__ == "__main__":
    sys.exit(main())
