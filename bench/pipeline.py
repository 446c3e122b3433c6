#!/usr/bin/env python3
"""8. Pipelined model: Coral's SSD MobileNet v1 split in two, on 2 TPUs vs on 1.

Two simulated USB accelerators (fake libedgetpu, 2.6 ms per invoke, 9 ms per
parameter swap). The two segments from ../shared/models (one caching token, 7 MiB of
parameters together) run as an `edgetpud.pipeline.PipelineSession`, fed by 4 caller
threads (as a worker's 4 lanes would) with 300x300 frames for a few seconds:

- pipelined: segment 0 on usb:2-1, segment 1 on usb:2-2;
- one TPU: both segments on usb:2-1 (they stay cached together: no swaps, but each
  request takes two invokes of the one device).

Each layout is run in turns, A B A B (three pairs; one in --quick). Figure: results/s
pipelined ÷ results/s on one TPU, median of the pairs. Target >= 1.8 (2.0 is the
ceiling: two devices instead of one).

    umockdev-wrapper .venv/bin/python -m bench.pipeline [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np

from bench import common

NAME = "pipeline"
TARGET = 1.8
SWAP_MS = 9.0
SEGMENTS = [
    f"ssd_mobilenet_v1_coco_quant_postprocess_segment_{k}_of_2_edgetpu.tflite" for k in (0, 1)
]
CALLERS = 4


def measure(devices: list[str], seconds: float) -> dict[str, Any]:
    from edgetpud.pipeline import open_pipeline
    from edgetpud.runtime import open_session

    pipe = open_pipeline(
        [common.MODELS / s for s in SEGMENTS],
        devices,
        lambda p, d: open_session(p, d, library=str(common.FAKE_LIB)),
    )
    frame = np.zeros((1, 300, 300, 3), np.uint8)
    stop = threading.Event()
    done = [0] * CALLERS

    def caller(k: int) -> None:
        while not stop.is_set():
            pipe.invoke([frame])
            done[k] += 1

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(CALLERS)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)  # warm up
        n0, t0 = sum(done), time.monotonic()
        time.sleep(seconds)
        n1, t1 = sum(done), time.monotonic()
        stages = [s.to_json() for s in pipe.stats()]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        pipe.close()
    return {"devices": devices, "per_s": round((n1 - n0) / (t1 - t0), 1), "stages": stages}


def run(quick: bool = False) -> dict[str, Any]:
    seconds, pairs = (2.0, 1) if quick else (5.0, 3)
    record = common.new_record(
        NAME,
        quick,
        {
            "simulated_invoke_ms": common.INVOKE_MS,
            "swap_ms": SWAP_MS,
            "segments": SEGMENTS,
            "callers": CALLERS,
            "measure_s": seconds,
            "pairs": pairs,
        },
    )
    piped, single = [], []
    with common.rig(common.INVOKE_MS, SWAP_MS) as r:
        os.environ.update(r.control.env())  # this process loads the fake library itself
        a, b = r.add_accelerators(2)
        for n in range(pairs):
            piped.append(measure([a, b], seconds))
            single.append(measure([a], seconds))
            print(
                f"  {n + 1}. pipelined {piped[-1]['per_s']:.0f}/s, "
                f"one TPU {single[-1]['per_s']:.0f}/s",
                flush=True,
            )
    ratios = [p["per_s"] / max(s["per_s"], 1e-9) for p, s in zip(piped, single, strict=True)]
    ratio = statistics.median(ratios)
    record["figures"] = {
        "pipelined": piped,
        "one_tpu": single,
        "ratios": [round(x, 3) for x in ratios],
        "ratio": round(ratio, 3),
    }
    record["target"] = {"ratio_min": TARGET, "measured": round(ratio, 3), "met": ratio >= TARGET}
    rows = []
    for label, runs in (("pipelined, 2 TPUs", piped), ("both segments on 1 TPU", single)):
        for m in runs:
            stage = " / ".join(
                f"seg {s['segment']} on {s['device']}: {s['latency_ms_p50']:.1f} ms p50"
                for s in m["stages"]
            )
            rows.append([label, f"{m['per_s']:.0f}/s", stage])
    rows.append(["pipelined ÷ one TPU (median of pairs)", f"{ratio:.2f}", ""])
    record["table"] = common.table(["layout", "results/s", "stages"], rows)
    print(record["table"])
    common.write_record(NAME, record)
    return record


if __name__ == "__main__":
    sys.exit(common.main(__doc__, run))
