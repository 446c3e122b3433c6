#!/usr/bin/env python3
"""2. Against the plain script: edgetpud vs the threaded loop users write today.

The same K simulated Edge TPUs (fake libedgetpu, 2.6 ms per invoke), the same
per-inference work (a 128x128x3 uint8 frame at the model's input size copied into
the input tensor, invoke, top-3 with labels,
JSON to mosquitto at QoS 0), each as its own process: A = `edgetpud run` with K
pinned models fed by the synthetic source (bench/efficiency.py), B =
bench/plain_script.py (one thread per TPU). Runs alternate A B A B; results/s are
counted by one mosquitto_sub subscriber. Figure: median over pairs of A / B.
Target >= 1.0 at K = 4.

    umockdev-wrapper .venv/bin/python -m bench.vs_script [--quick]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench import common, efficiency
from tests.support.polling import wait_for

NAME = "vs_script"
TARGET = 1.0


def measure_script(r: common.Rig, k: int, qos: int, seconds: float, warmup: float) -> float:
    tap = r.tap(f"{common.BASE}/models/+/results", qos=qos)
    proc = subprocess.Popen(
        [*common.module("bench.plain_script"), "--devices", str(k), "--model",
         str(common.MODELS / common.MODEL_128), "--labels", str(common.MODELS / common.LABELS),
         "--library", str(common.FAKE_LIB), "--port", str(r.broker.port), "--qos", str(qos),
         "--prefix", common.PREFIX, "--node", common.NODE, "--frame", str(efficiency.FRAME)],
        env={**os.environ, **r.control.env()}, cwd=common.ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: tap.count() >= 20 * k or proc.poll() is not None, 120, "script results")
        if proc.poll() is not None:
            raise RuntimeError(f"plain_script.py exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        time.sleep(warmup)
        t0 = time.time()
        time.sleep(seconds)
        t1 = time.time()
        time.sleep(0.5)
        rate = common.rate_between([t for t, _, _ in tap.lines()], t0, t1)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)
        tap.stop()
    return rate


def run(quick: bool = False) -> dict[str, Any]:
    ks = [4] if quick else [1, 4, 8]
    pairs = 1 if quick else 3
    qos = 0
    seconds, warmup = (2.0, 0.5) if quick else (6.0, 2.0)
    record = common.new_record(
        NAME,
        quick,
        {
            "simulated_invoke_ms": common.INVOKE_MS,
            "model": common.MODEL_128,
            "input": "128x128x3 uint8 noise frames at the model's input size, copied into "
            "the input tensor",
            "postprocess": "classify top_k=3 with labels, JSON, paho publish",
            "qos": qos,
            "pairs": pairs,
            "order": "A B A B ... (A = edgetpud, B = plain script)",
            "measure_s": seconds,
            "warmup_s": warmup,
        },
    )
    figures = []
    rows = []
    for k in ks:
        with common.rig(common.INVOKE_MS) as r:
            devices = r.add_accelerators(k)
            runs = []
            for _ in range(pairs):
                a = efficiency.measure_daemon(r, devices, qos, seconds, warmup)["rate_per_s"]
                b = measure_script(r, k, qos, seconds, warmup)
                runs.append({"edgetpud_per_s": round(a, 1), "script_per_s": round(b, 1)})
                print(f"  K={k}: edgetpud {a:.0f}/s, script {b:.0f}/s", flush=True)
            ratios = [x["edgetpud_per_s"] / max(x["script_per_s"], 1e-9) for x in runs]
            ratio = statistics.median(ratios)
            ceiling = k * 1000.0 / common.INVOKE_MS
            figures.append(
                {"k": k, "pairs": runs, "ratio_median": round(ratio, 3), "ceiling_per_s": ceiling}
            )
            rows.append(
                [
                    k,
                    statistics.median(x["edgetpud_per_s"] for x in runs),
                    statistics.median(x["script_per_s"] for x in runs),
                    round(ceiling, 1),
                    round(ratio, 3),
                ]
            )
    record["figures"] = figures
    at4 = [f["ratio_median"] for f in figures if f["k"] == 4]
    record["target"] = {"ratio_k4_min": TARGET, "measured": at4[0] if at4 else None}
    record["target"]["met"] = bool(at4 and at4[0] >= TARGET)
    record["table"] = common.table(
        ["K", "edgetpud/s", "script/s", "ceiling/s", "edgetpud ÷ script (median of pairs)"], rows
    )
    print(record["table"])
    common.write_record(NAME, record)
    return record


if __name__ == "__main__":
    sys.exit(common.main(__doc__, run))
