"""Benchmark: plan 64 models over 16 devices (target: median under 10 ms).

Run: .venv/bin/python -m bench.bench_placement
"""

from __future__ import annotations

import statistics
import time

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
    cpu = {"fresh plan": 0.0, "re-plan after unplug": 0.0}
    runs = 200
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        plan(devices, models)
        t1, c1 = time.perf_counter(), time.process_time()
        plan(devices[1:], models, first)
        t2, c2 = time.perf_counter(), time.process_time()
        fresh.append(t1 - t0)
        replan.append(t2 - t1)
        cpu["fresh plan"] += c1 - c0
        cpu["re-plan after unplug"] += c2 - c1
    # Wall time includes whatever else the machine is doing; CPU time is the planner's own.
    for name, xs in (("fresh plan", fresh), ("re-plan after unplug", replan)):
        print(
            f"{name}: 64 models / 16 devices: median {statistics.median(xs) * 1000:.2f} ms, "
            f"max {max(xs) * 1000:.2f} ms wall; {cpu[name] / runs * 1000:.2f} ms CPU "
            "(target < 10 ms)"
        )


if __name__ == "__main__":
    main()
