#!/usr/bin/env python3
"""5. Placement: edgetpud's plan vs a naive round-robin spread, when models outnumber TPUs.

Two simulated USB accelerators (fake libedgetpu: 2.6 ms per invoke plus a 9 ms swap
penalty whenever the parameter caching token on a device changes, as when an Edge TPU
reloads another model's parameters). Three models, each fed by the synthetic source as
fast as it takes requests (frames at the model's input size): `cc128` and `cc160` are
the co-compiled pair from ../shared/models (one caching token), `plain160` is the plain
0.5_160 Edge TPU build (its own token).

- edgetpud: every model `device = "any"`; the planner decides.
- round-robin: models pinned in order to usb:2-1, usb:2-2, usb:2-1 (cc128 and plain160
  share a TPU and swap parameters on every alternation).

Figure: total results/s (counted by a mosquitto_sub subscriber) of the plan / of the
round-robin spread. Target >= 1.5.

Each spread is started afresh five times, alternating (one in --quick), and the
figure compares the median starts: at start the swapping TPU's queue settles into one
of a few stable orders of the two models' invokes (6, 4 or 2 reloads per 8 invokes
were seen), which moves the round-robin total by up to a fifth; with three starts the
median was still a matter of luck (1.46 one run, 1.56 the next).

Also measured, for context: the same round-robin spread, and the plan's spread, run by
bench/plain_script.py (one thread and one interpreter per model, as a hand-made setup
runs it today): the ratio within the script is what the placement alone is worth to a
runner that does not queue invokes. Both spreads lose to swapping, but edgetpud's 4
interpreters per TPU let a model's invokes queue back to back on the shared TPU, so
fewer of them pay the 9 ms reload than the script's strict alternation does: the
headline ratio is against the spread as edgetpud runs it, the harder of the two.

    umockdev-wrapper .venv/bin/python bench/placement_ratio.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

NAME = "placement"
TARGET = 1.5
SWAP_MS = 9.0
MODELS = {
    "cc128": "mobilenet_v1_0.25_128_quant_cocompiled_with_mobilenet_v1_0.5_160_quant_edgetpu.tflite",
    "cc160": "mobilenet_v1_0.5_160_quant_cocompiled_with_mobilenet_v1_0.25_128_quant_edgetpu.tflite",
    "plain160": "mobilenet_v1_0.5_160_quant_edgetpu.tflite",
}
SCRIPT = Path(__file__).resolve().parent / "plain_script.py"
SOURCE = 'type = "synthetic"\nrate = 0\npattern = "noise"'


def measure(r: common.Rig, pins: dict[str, str], seconds: float, warmup: float) -> dict[str, Any]:
    tap = r.tap(f"{common.BASE}/models/+/results")
    htap = r.tap(f"{common.BASE}/health", payload=True)
    models = "".join(
        common.model_table(m, f, device=pins.get(m, "any"), source=SOURCE)
        for m, f in MODELS.items()
    )
    d = r.daemon(models)
    try:
        common.wait_for(lambda: tap.count() >= 100, 120, "results")
        total, per = _rates(tap, {m: m for m in MODELS}, seconds, warmup)
        h = common.health(htap).get("models", {})
        placed = {m: h.get(m, {}).get("devices", []) for m in MODELS}
    finally:
        d.stop(timeout=60)
        tap.stop()
        htap.stop()
    return {"total_per_s": round(total, 1), "per_model_per_s": per, "devices": placed}


ROUND_ROBIN = {"cc128": 0, "cc160": 1, "plain160": 0}  # model -> index of its accelerator


def measure_script(
    r: common.Rig, spread: dict[str, int], seconds: float, warmup: float
) -> dict[str, Any]:
    """A spread run by bench/plain_script.py: model -> index of the USB accelerator."""
    tap = r.tap(f"{common.BASE}/models/+/results")
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--labels", str(common.MODELS / common.LABELS),
         "--library", str(common.FAKE_LIB), "--port", str(r.broker.port), "--frame", "0",
         "--prefix", common.PREFIX, "--node", common.NODE,
         *(f"--assign={common.MODELS / MODELS[m]}@{n}" for m, n in spread.items())],
        env={**os.environ, **r.control.env()},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        common.wait_for(lambda: tap.count() >= 100 or proc.poll() is not None, 120, "results")
        if proc.poll() is not None:
            raise RuntimeError(f"plain_script.py exited: {proc.communicate()[1].decode()[-2000:]}")
        total, per = _rates(tap, {m: f"m{i}" for i, m in enumerate(spread)}, seconds, warmup)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        tap.stop()
    devices = {m: [f"usb:{n}"] for m, n in spread.items()}
    return {"total_per_s": round(total, 1), "per_model_per_s": per, "devices": devices}


def run(quick: bool = False) -> dict[str, Any]:
    seconds, warmup = (2.0, 0.5) if quick else (8.0, 2.0)
    starts = 1 if quick else 5
    record = common.new_record(
        NAME,
        quick,
        {
            "simulated_invoke_ms": common.INVOKE_MS,
            "swap_ms": SWAP_MS,
            "models": MODELS,
            "round_robin": {m: f"usb:2-{n + 1}" for m, n in ROUND_ROBIN.items()},
            "source": "synthetic, rate 0, frames at the model's input size",
            "measure_s": seconds,
            "warmup_s": warmup,
            "starts_per_spread": starts,
        },
    )
    with common.rig(common.INVOKE_MS, SWAP_MS) as r:
        accelerators = r.add_accelerators(2)
        pins = {m: accelerators[n] for m, n in ROUND_ROBIN.items()}
        plans, rrs = [], []
        for n in range(starts):  # A B A B: each spread started afresh `starts` times
            plans.append(measure(r, {}, seconds, warmup))
            print(f"  {n + 1}. edgetpud plan: {plans[-1]['total_per_s']:.0f}/s", flush=True)
            rrs.append(measure(r, pins, seconds, warmup))
            print(f"  {n + 1}. round-robin:   {rrs[-1]['total_per_s']:.0f}/s", flush=True)
        script = measure_script(r, ROUND_ROBIN, seconds, warmup)
        print(f"  round-robin, plain script: {script['total_per_s']:.0f}/s", flush=True)
        # the spread the planner chose, model -> accelerator index, as the script takes it
        chosen = {m: accelerators.index(_median_run(plans)["devices"][m][0]) for m in MODELS}
        script_plan = measure_script(r, chosen, seconds, warmup)
        print(f"  the plan's spread, plain script: {script_plan['total_per_s']:.0f}/s", flush=True)
    plan, rr = _median_run(plans), _median_run(rrs)
    ratio = plan["total_per_s"] / max(rr["total_per_s"], 1e-9)
    script_ratio = plan["total_per_s"] / max(script["total_per_s"], 1e-9)
    script_plan_ratio = script_plan["total_per_s"] / max(script["total_per_s"], 1e-9)
    record["figures"] = {
        "edgetpud": plan,
        "round_robin": rr,
        "ratio": round(ratio, 3),
        "edgetpud_totals_per_s": [m["total_per_s"] for m in plans],
        "round_robin_totals_per_s": [m["total_per_s"] for m in rrs],
        "ratio_range": [
            round(min(m["total_per_s"] for m in plans) / max(m["total_per_s"] for m in rrs), 3),
            round(max(m["total_per_s"] for m in plans) / min(m["total_per_s"] for m in rrs), 3),
        ],
        "round_robin_plain_script": script,
        "ratio_to_plain_script": round(script_ratio, 3),
        "plan_spread_plain_script": script_plan,
        "ratio_within_plain_script": round(script_plan_ratio, 3),
    }
    record["target"] = {"ratio_min": TARGET, "measured": round(ratio, 3), "met": ratio >= TARGET}
    record["table"] = common.table(
        ["spread", "cc128", "cc160", "plain160", "total/s"],
        [
            [
                "edgetpud plan (median start)",
                *(_cell(plan, m) for m in MODELS),
                plan["total_per_s"],
            ],
            ["round-robin (median start)", *(_cell(rr, m) for m in MODELS), rr["total_per_s"]],
            ["ratio plan ÷ round-robin", "", "", "", round(ratio, 3)],
            [
                f"round-robin, each of {starts} starts",
                "",
                "",
                "",
                " / ".join(f"{m['total_per_s']:.0f}" for m in rrs),
            ],
            [
                "round-robin, plain script",
                *(_cell(script, m) for m in MODELS),
                script["total_per_s"],
            ],
            ["ratio plan ÷ plain script", "", "", "", round(script_ratio, 3)],
            [
                "the plan's spread, plain script",
                *(_cell(script_plan, m) for m in MODELS),
                script_plan["total_per_s"],
            ],
            [
                "ratio within the plain script (its plan ÷ its round-robin)",
                "",
                "",
                "",
                round(script_plan_ratio, 3),
            ],
        ],
    )
    print(record["table"])
    common.write_record(NAME, record)
    return record


def _rates(
    tap: common.Tap, topics: dict[str, str], seconds: float, warmup: float
) -> tuple[float, dict[str, float]]:
    """After `warmup` s, results/s over `seconds` s: in total and per model (by topic level)."""
    time.sleep(warmup)
    t0 = time.time()
    time.sleep(seconds)
    t1 = time.time()
    time.sleep(0.5)
    lines = tap.lines()
    total = common.rate_between([t for t, _, _ in lines], t0, t1)
    per = {
        m: round(common.rate_between([t for t, tp, _ in lines if f"/{level}/" in tp], t0, t1), 1)
        for m, level in topics.items()
    }
    return total, per


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose total is the median (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda m: m["total_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def _cell(m: dict[str, Any], model: str) -> str:
    devices = ",".join(m["devices"].get(model) or ["?"])
    return f"{m['per_model_per_s'][model]:.0f}/s on {devices}"


if __name__ == "__main__":
    sys.exit(common.main(__doc__, run))
