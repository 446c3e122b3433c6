#!/usr/bin/env python3
"""5. Shared TPUs, scheduled: two models that do not share a caching token on one TPU.

Two simulated USB accelerators (fake libedgetpu: 2.6 ms per invoke plus a 9 ms swap
penalty whenever the parameter caching token on a device changes, as when an Edge TPU
reloads another model's parameters). Three models, each fed by the synthetic source as
fast as it takes requests: `cc128` and `cc160` are the co-compiled pair from
../shared/models (one caching token), `plain160` the plain 0.5_160 Edge TPU build (its
own token). A forced share: cc128 and plain160 pinned to usb:2-1, cc160 to usb:2-2, so
the first TPU must alternate between two tokens.

Before the device gate (edgetpud/scheduler.py) that TPU served what its lanes'
queueing settled into at start: 108, 141 or 206 results/s (6, 4 or 2 reloads per 8
invokes; docs/benchmarks.md). With the gate, its invokes run in runs by token, each
bounded by the models' latency budget (max_batch_wait, default 50 ms): the best
schedule that budget allows is one reload per run of 50 ms, (50 - 9) / 50 of the
time invoking: 315 results/s. Target: the shared TPU reaches >= 90 % of that in every
one of five fresh starts.

    umockdev-wrapper .venv/bin/python -m bench.shared_tpu [--quick]
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bench import common
from edgetpud.scheduler import DEFAULT_BATCH_WAIT
from tests.support.polling import wait_for

NAME = "shared_tpu"
TARGET = 0.9  # of the best schedule the latency budget allows
SWAP_MS = 9.0
MODELS = {
    "cc128": "mobilenet_v1_0.25_128_quant_cocompiled_with_mobilenet_v1_0.5_160_quant_edgetpu.tflite",
    "cc160": "mobilenet_v1_0.5_160_quant_cocompiled_with_mobilenet_v1_0.25_128_quant_edgetpu.tflite",
    "plain160": "mobilenet_v1_0.5_160_quant_edgetpu.tflite",
}
SHARE = {"cc128": 0, "cc160": 1, "plain160": 0}  # model -> index of its accelerator
SHARED = ("cc128", "plain160")
SOURCE = 'type = "synthetic"\nrate = 0\npattern = "noise"'


def best_schedule_per_s(budget_s: float, invoke_ms: float, swap_ms: float) -> float:
    """Results/s of a TPU shared by two saturated tokens when each run lasts the whole
    budget and pays one reload: the most a schedule within that budget can serve."""
    budget_ms = budget_s * 1000.0
    return (budget_ms - swap_ms) / budget_ms * 1000.0 / invoke_ms


def measure(r: common.Rig, pins: dict[str, str], seconds: float, warmup: float) -> dict[str, Any]:
    tap = r.tap(f"{common.BASE}/models/+/results")
    htap = r.tap(f"{common.BASE}/health", payload=True)
    models = "".join(
        common.model_table(m, f, device=pins.get(m, "any"), source=SOURCE)
        for m, f in MODELS.items()
    )
    d = r.daemon(models)
    try:
        wait_for(lambda: tap.count() >= 100, 120, "results")
        total, per = _rates(tap, {m: m for m in MODELS}, seconds, warmup)
        h = common.health(htap).get("models", {})
        placed = {m: h.get(m, {}).get("devices", []) for m in MODELS}
    finally:
        d.stop(timeout=60)
        tap.stop()
        htap.stop()
    return {"total_per_s": round(total, 1), "per_model_per_s": per, "devices": placed}


def run(quick: bool = False) -> dict[str, Any]:
    seconds, warmup = (2.0, 1.0) if quick else (8.0, 2.0)
    starts = 1 if quick else 5
    best = best_schedule_per_s(DEFAULT_BATCH_WAIT, common.INVOKE_MS, SWAP_MS)
    record = common.new_record(
        NAME,
        quick,
        {
            "simulated_invoke_ms": common.INVOKE_MS,
            "swap_ms": SWAP_MS,
            "max_batch_wait_s": DEFAULT_BATCH_WAIT,
            "models": MODELS,
            "share": {m: f"usb:2-{n + 1}" for m, n in SHARE.items()},
            "source": "synthetic, rate 0, frames at the model's input size",
            "measure_s": seconds,
            "warmup_s": warmup,
            "starts": starts,
        },
    )
    runs = []
    with common.rig(common.INVOKE_MS, SWAP_MS) as r:
        accelerators = r.add_accelerators(2)
        pins = {m: accelerators[n] for m, n in SHARE.items()}
        for n in range(starts):
            runs.append(measure(r, pins, seconds, warmup))
            shared = sum(runs[-1]["per_model_per_s"][m] for m in SHARED)
            runs[-1]["shared_tpu_per_s"] = round(shared, 1)
            print(
                f"  {n + 1}. shared TPU {shared:.0f}/s, total {runs[-1]['total_per_s']:.0f}/s",
                flush=True,
            )
    shared_rates = [m["shared_tpu_per_s"] for m in runs]
    worst = min(shared_rates)
    record["figures"] = {
        "best_schedule_per_s": round(best, 1),
        "shared_tpu_per_s": shared_rates,
        "shared_tpu_of_best": [round(x / best, 3) for x in shared_rates],
        "spread_per_s": round(max(shared_rates) - worst, 1),
        "starts": runs,
    }
    record["target"] = {
        "of_best_min": TARGET,
        "measured": round(worst / best, 3),
        "met": worst / best >= TARGET,
    }
    record["table"] = common.table(
        ["start", "cc128", "plain160 (same TPU)", "cc160 (other TPU)", "shared TPU", "of best"],
        [
            [
                n + 1,
                _cell(m, "cc128"),
                _cell(m, "plain160"),
                _cell(m, "cc160"),
                f"{m['shared_tpu_per_s']:.0f}/s",
                f"{m['shared_tpu_per_s'] / best:.0%}",
            ]
            for n, m in enumerate(runs)
        ]
        + [["best schedule (50 ms runs, one 9 ms reload each)", "", "", "", f"{best:.0f}/s", ""]],
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


def _cell(m: dict[str, Any], model: str) -> str:
    devices = ",".join(m["devices"].get(model) or ["?"])
    return f"{m['per_model_per_s'][model]:.0f}/s on {devices}"


if __name__ == "__main__":
    sys.exit(common.main(__doc__, run))
