#!/usr/bin/env python3
"""7. Footprint: resident memory (RSS) of `edgetpud run`.

The daemon under umockdev with four simulated USB accelerators, connected to a real
mosquitto, with 0 models (idle), then 1, 2 and 4 models (mobilenet_v1_0.25_128 Edge TPU
build, top-3 classify, no source: workers open and wait), each pinned to its own
accelerator. RSS is VmRSS from /proc/<pid>/status once health shows every model
running and two health ticks have passed. Figure: idle RSS and the RSS added per model
worker (least-squares slope over 1, 2, 4 models). Target: idle <= 80 MB.

    umockdev-wrapper .venv/bin/python -m bench.footprint [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench import common
from tests.support.polling import wait_for

NAME = "footprint"
TARGET_IDLE_MB = 80.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def measure(r: common.Rig, devices: list[str], n: int) -> float:
    htap = r.tap(f"{common.BASE}/health", payload=True)
    models = "".join(
        common.model_table(f"m{i}", common.MODEL_128, device=devices[i]) for i in range(n)
    )
    d = r.daemon(models)
    try:

        def running() -> bool:
            h = common.health(htap).get("models", {})
            return len(h) == n and all(m.get("state") == "running" for m in h.values())

        wait_for(running, 120, f"{n} model(s) running")
        time.sleep(2.5)  # two health ticks: steady state
        return rss_mb(d.proc.pid)
    finally:
        d.stop(timeout=60)
        htap.stop()


def run(quick: bool = False) -> dict[str, Any]:
    counts = [0, 2] if quick else [0, 1, 2, 4]
    record = common.new_record(
        NAME,
        quick,
        {"model": common.MODEL_128, "models": counts, "accelerators": 4, "source": "none"},
    )
    rss: dict[int, float] = {}
    with common.rig(common.INVOKE_MS) as r:
        devices = r.add_accelerators(4)
        for n in counts:
            rss[n] = measure(r, devices, n)
            print(f"  {n} model(s): {rss[n]:.1f} MB", flush=True)
    xs = [n for n in counts if n > 0] if len(counts) > 2 else counts
    mean_x = sum(xs) / len(xs)
    mean_y = sum(rss[n] for n in xs) / len(xs)
    slope = sum((n - mean_x) * (rss[n] - mean_y) for n in xs) / sum((n - mean_x) ** 2 for n in xs)
    record["figures"] = {
        "rss_mb": {str(n): round(v, 1) for n, v in rss.items()},
        "idle_rss_mb": round(rss[0], 1),
        "one_model_rss_mb": round(rss[1], 1) if 1 in rss else None,
        "per_added_worker_mb": round(slope, 2),
    }
    record["target"] = {
        "idle_rss_mb_max": TARGET_IDLE_MB,
        "measured": round(rss[0], 1),
        "met": rss[0] <= TARGET_IDLE_MB,
    }
    record["table"] = common.table(
        ["models", "RSS (MB)"],
        [*[[n, round(rss[n], 1)] for n in counts], ["per added worker", round(slope, 2)]],
    )
    print(record["table"])
    common.write_record(NAME, record)
    return record


if __name__ == "__main__":
    sys.exit(common.main(__doc__, run))
