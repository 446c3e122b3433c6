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

    umockdev-wrapper .venv/bin/python bench/placement_ratio.py [--quick]
"""

from __future__ import annotations

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
        time.sleep(warmup)
        t0 = time.time()
        time.sleep(seconds)
        t1 = time.time()
        time.sleep(0.5)
        lines = tap.lines()
        total = common.rate_between([t for t, _, _ in lines], t0, t1)
        per = {
            m: round(
                common.rate_between([t for t, topic, _ in lines if f"/{m}/" in topic], t0, t1), 1
            )
            for m in MODELS
        }
        h = common.health(htap).get("models", {})
        placed = {m: h.get(m, {}).get("devices", []) for m in MODELS}
    finally:
        d.stop(timeout=60)
        tap.stop()
        htap.stop()
    return {"total_per_s": round(total, 1), "per_model_per_s": per, "devices": placed}


def run(quick: bool = False) -> dict[str, Any]:
    seconds, warmup = (2.0, 0.5) if quick else (8.0, 2.0)
    record = common.new_record(
        NAME,
        quick,
        {
            "simulated_invoke_ms": common.INVOKE_MS,
            "swap_ms": SWAP_MS,
            "models": MODELS,
            "round_robin": {"cc128": "usb:2-1", "cc160": "usb:2-2", "plain160": "usb:2-1"},
            "source": "synthetic, rate 0, frames at the model's input size",
            "measure_s": seconds,
            "warmup_s": warmup,
        },
    )
    with common.rig(common.INVOKE_MS, SWAP_MS) as r:
        a, b = r.add_accelerators(2)
        plan = measure(r, {}, seconds, warmup)
        print(f"  edgetpud plan: {plan['total_per_s']:.0f}/s {plan['devices']}", flush=True)
        rr = measure(r, {"cc128": a, "cc160": b, "plain160": a}, seconds, warmup)
        print(f"  round-robin:   {rr['total_per_s']:.0f}/s {rr['devices']}", flush=True)
    ratio = plan["total_per_s"] / max(rr["total_per_s"], 1e-9)
    record["figures"] = {"edgetpud": plan, "round_robin": rr, "ratio": round(ratio, 3)}
    record["target"] = {"ratio_min": TARGET, "measured": round(ratio, 3), "met": ratio >= TARGET}
    record["table"] = common.table(
        ["spread", "cc128", "cc160", "plain160", "total/s"],
        [
            ["edgetpud plan", *(_cell(plan, m) for m in MODELS), plan["total_per_s"]],
            ["round-robin", *(_cell(rr, m) for m in MODELS), rr["total_per_s"]],
            ["ratio", "", "", "", round(ratio, 3)],
        ],
    )
    print(record["table"])
    common.write_record(NAME, record)
    return record


def _cell(m: dict[str, Any], model: str) -> str:
    devices = ",".join(m["devices"].get(model) or ["?"])
    return f"{m['per_model_per_s'][model]:.0f}/s on {devices}"


if __name__ == "__main__":
    sys.exit(common.main(__doc__, run))
