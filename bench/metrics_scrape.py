#!/usr/bin/env python3
"""Does scraping /metrics slow the request path? (docs/metrics.md, issue: "measure")

    .venv/bin/python -m bench.metrics_scrape [--seconds 3]

Worker threads call `Metrics.observe(result)` as fast as they can (what every
answered request costs on its lane), first alone, then while a scraper renders the
exposition in a loop as fast as it can (far beyond Prometheus' one scrape a second),
then while a scraper renders once a second. Prints observes/s for each, the cost of
one observe, and the time one render takes with a health document of 8 models and
6 devices. Writes bench/results/metrics_scrape.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

from edgetpud.messages import Request, Result, Timing
from edgetpud.metrics import Metrics

RESULTS = Path(__file__).resolve().parent / "results" / "metrics_scrape.json"
MODELS = [f"model{i}" for i in range(8)]
DEVICES = ["pci:0000:03:00.0", *(f"usb:2-{i}" for i in range(1, 6))]


def health() -> dict[str, Any]:
    return {
        "daemon": {"version": "bench", "uptime_s": 1.0, "config_generation": 1},
        "devices": [
            {"identity": d, "kind": d[:3], "port": d[4:], "bus": "2", "speed_mbps": 5000,
             "verdict": "ok", "temperature": 50.0 if d.startswith("pci") else None,
             "throttle_level": 0, "health": {"state": "ok"}}
            for d in DEVICES
        ],
        "models": {m: {"state": "running", "tier": "dedicated", "devices": [DEVICES[i % 6]],
                       "queue_depth": 1, "dropped": 0} for i, m in enumerate(MODELS)},
        "buses": [{"bus": "2", "accelerators": DEVICES[1:], "inferences_per_s": 1.0,
                   "bytes_per_s": 1.0}],
        "mqtt": {"connected": True, "backlog": 0, "requests_rejected": {"busy": 1}},
    }  # fmt: skip


def observe_loop(m: Metrics, stop: threading.Event, counts: list[int], slot: int) -> None:
    results = [
        Result(Request(MODELS[i], b""), DEVICES[i % 6], timing=Timing(0.3, 0.1, 2.6, 0.2))
        for i in range(len(MODELS))
    ]
    n = 0
    while not stop.is_set():
        for r in results:
            m.observe(r)
        n += len(results)
    counts[slot] = n


def run(seconds: float, scrape_every: float | None) -> tuple[float, float, int]:
    """(observes/s over 2 threads, mean render ms, renders) with a scraper every
    `scrape_every` s (0: back to back; None: no scraper)."""
    m = Metrics()
    m.update(health())
    stop = threading.Event()
    counts = [0, 0]
    threads = [threading.Thread(target=observe_loop, args=(m, stop, counts, i)) for i in range(2)]
    renders: list[float] = []

    def scraper() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            m.render()
            renders.append(time.perf_counter() - t0)
            if scrape_every:
                stop.wait(scrape_every)

    if scrape_every is not None:
        threads.append(threading.Thread(target=scraper))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    mean = sum(renders) / len(renders) * 1000 if renders else 0.0
    return sum(counts) / seconds, mean, len(renders)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    m = Metrics()
    r = Result(Request("m", b""), "usb:2-1", timing=Timing(0.3, 0.1, 2.6, 0.2))
    n = 50_000
    t0 = time.perf_counter()
    for _ in range(n):
        m.observe(r)
    one_us = (time.perf_counter() - t0) / n * 1e6
    figures: dict[str, Any] = {"observe_us": round(one_us, 2)}
    for name, every in (("alone", None), ("scraped back to back", 0.0), ("scraped every 1 s", 1.0)):
        per_s, render_ms, renders = run(args.seconds, every)
        figures[name] = {
            "observes_per_s": round(per_s),
            "render_ms": round(render_ms, 2),
            "renders": renders,
        }
        print(f"{name:>22}: {per_s:>9,.0f} observes/s"
              + (f", render {render_ms:.2f} ms x {renders}" if renders else ""))  # fmt: skip
    print(f"one observe: {one_us:.1f} µs")
    out = {
        "benchmark": "metrics_scrape",
        "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg": os.getloadavg()},
        "seconds": args.seconds,
        "figures": figures,
    }  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
