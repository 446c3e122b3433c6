"""Benchmark: plan 64 models over 16 devices (target: median under 10 ms).

Run: .venv/bin/python bench/bench_placement.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgetpud.placement import ModelSpec, plan
from tests.support.placement import dev


def main() -> None:
    devices = [dev(f"pci:0000:0{i}:00.0") for i in range(4)]
    devices += [dev(f"usb:{i % 3 + 1}-{i}", speed=5000 if i % 2 else 480) for i in range(12)]
    models = [
        ModelSpec(
            f"m{i}",
            priority=(i * 37) % 101,
            replicas=1 + (i % 5 == 0),
            device=["any", "any", "any", "usb", "pci"][i % 5],
            caching_token=(i % 7) or None,
            param_bytes=(i % 4) * 1024 * 1024,
        )
        for i in range(64)
    ]
    first = plan(devices, models)
    fresh, replan = [], []
    for _ in range(200):
        t0 = time.perf_counter()
        plan(devices, models)
        t1 = time.perf_counter()
        plan(devices[1:], models, first)
        t2 = time.perf_counter()
        fresh.append(t1 - t0)
        replan.append(t2 - t1)
    for name, xs in (("fresh plan", fresh), ("re-plan after unplug", replan)):
        print(
            f"{name}: 64 models / 16 devices: median {statistics.median(xs) * 1000:.2f} ms, "
            f"max {max(xs) * 1000:.2f} ms (target < 10 ms)"
        )


if __name__ == "__main__":
    main()
