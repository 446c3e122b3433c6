#!/usr/bin/env python3
"""Throughput of the workers: N simulated Edge TPUs, each at `invoke_ms` per invoke.

Runs the real path end to end except the TPU itself: a umockdev testbed of USB
accelerators, the fake libedgetpu (tests/native/fake_edgetpu.c) in simulate mode
loaded through tflite_runtime's external-delegate path, one `Worker` per device
on one shared `ModelQueue`, and the Python work a real request needs: decode a
224x224 JPEG and fit it to the model input (edgetpud.preprocess), top-3
classification with labels (the `classify` plugin), and the MQTT result payload
encoded as JSON (edgetpud.payloads). A feeder thread builds requests as a source
would and keeps the queue full.

    make build/libfake_edgetpu.so
    .venv/bin/python -m bench.bench_workers [--runs 5] [--seconds 5]

It re-runs itself under `umockdev-wrapper` when needed, prints a table and
writes bench/results/workers.json. The target is 90 % of N x 1000/invoke_ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import ensure_umockdev
from edgetpud.config import RuntimeConfig

ROOT = Path(__file__).resolve().parent.parent

MODEL = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
TARGET_SHARE = 0.90


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--devices", type=int, default=4, help="simulated USB accelerators (default 4)")
    p.add_argument(
        "--invoke-ms", type=float, default=2.5, help="simulated invoke time (default 2.5)"
    )
    p.add_argument("--seconds", type=float, default=5.0, help="measured time per run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured time per run (default 1)")
    p.add_argument(
        "--runs", type=int, default=5, help="runs; best and median are reported (default 5)"
    )
    p.add_argument(
        "--payload",
        choices=("tensor", "array", "image"),
        default="tensor",
        help="tensor: raw input-tensor bytes (an MQTT tensor request), checked and copied into "
        "an input array per request; array: a 224x224x3 uint8 image array resized per request; "
        "image: 224x224 JPEG bytes decoded and resized per request (default tensor)",
    )
    p.add_argument(
        "--no-bare",
        dest="bare",
        action="store_false",
        help="skip the comparison run of bare invoke loops (no Python work) after each run",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="lower the library's invoke_ms until one bare invoke really takes --invoke-ms",
    )
    p.add_argument(
        "--interpreters",
        type=int,
        default=RuntimeConfig.tpu_interpreters,
        help="interpreters (lanes) per worker, as runtime.tpu_interpreters "
        f"(default {RuntimeConfig.tpu_interpreters}, the daemon's)",
    )
    p.add_argument(
        "--switch-interval",
        type=float,
        default=0.0,
        help="sys.setswitchinterval in ms for the run (default: Python's 5 ms)",
    )
    p.add_argument("--models", type=Path, default=ROOT.parent / "shared" / "models")
    p.add_argument("--library", type=Path, default=ROOT / "build" / "libfake_edgetpu.so")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "workers.json")
    return p.parse_args()


def one_run(args: argparse.Namespace, devices: list[str], payload: Any) -> dict[str, Any]:
    from edgetpud_plugins.classify import Classify, ClassifyConfig

    from edgetpud.labels import load_labels
    from edgetpud.messages import Request, Result
    from edgetpud.payloads import result_payload, to_json
    from edgetpud.preprocess import make_preprocess
    from edgetpud.runtime import open_session
    from edgetpud.workers import ModelQueue, Worker, WorkerReport

    model = args.models / MODEL
    labels = load_labels(args.models / "imagenet_labels.txt")
    queue = ModelQueue("bench", 64, "block")
    preprocess = make_preprocess("stretch")
    classifiers: dict[int, Classify] = {}

    def postprocess(outputs: list[Any], request: Request, info: Any) -> Any:
        plugin = classifiers.get(id(info))
        if plugin is None:
            plugin = classifiers.setdefault(
                id(info), Classify(ClassifyConfig(top_k=3), info, labels)
            )
        return plugin.process(outputs, request)

    done: list[float] = []
    sums = [0.0, 0.0, 0.0, 0.0]
    errors: list[str] = []
    sink = bytearray()

    def on_result(result: Result) -> None:
        data = to_json(result_payload(result, "bench"))  # what the MQTT layer publishes
        sink[:] = data
        if result.error:
            errors.append(result.error)
            return
        t = result.timing
        if t is not None:
            sums[0] += t.queue_ms
            sums[1] += t.preprocess_ms
            sums[2] += t.invoke_ms
            sums[3] += t.postprocess_ms
        done.append(time.perf_counter())

    reports: list[WorkerReport] = []
    workers = []
    for device in devices:

        def opener(device: str = device) -> Any:
            return open_session(model, device, library=str(args.library))

        workers.append(
            Worker(
                "bench",
                device,
                queue,
                opener,
                preprocess,
                postprocess,
                on_result,
                reports.append,
                stall_timeout=10.0,
                interpreters=args.interpreters,
            )
        )
    for w in workers:
        w.start()
    deadline = time.monotonic() + 60
    while sum(r.kind in ("opened", "open_failed") for r in reports) < len(workers):
        if time.monotonic() > deadline:
            sys.exit("workers did not open their sessions within 60 s")
        time.sleep(0.01)
    failed = [r for r in reports if r.kind == "open_failed"]
    if failed:
        sys.exit(f"could not open: {failed[0].device}: {failed[0].error}")

    stop = threading.Event()
    kind = args.payload

    def feed() -> None:
        while not stop.is_set():
            queue.put(
                Request(model="bench", payload=payload, kind=kind, source="bench"), timeout=0.2
            )

    feeder = threading.Thread(target=feed, name="bench-feeder", daemon=True)
    feeder.start()
    time.sleep(args.warmup)
    n0, t0, c0, sums0 = len(done), time.perf_counter(), time.process_time(), list(sums)
    time.sleep(args.seconds)
    n1, t1, c1, sums1 = len(done), time.perf_counter(), time.process_time(), list(sums)
    stop.set()
    feeder.join(10)
    end = time.monotonic() + 30
    for w in workers:
        w.stop(end)
    queue.drain()
    n = max(n1 - n0, 1)
    mean = [(b - a) / n for a, b in zip(sums0, sums1)]
    stats = [w.stats() for w in workers]
    return {
        "rate": (n1 - n0) / (t1 - t0),
        "cpu_ms_per_result": (c1 - c0) * 1000.0 / n,
        "results": n1 - n0,
        "errors": len(errors),
        "mean_ms": dict(zip(("queue", "preprocess", "invoke", "postprocess"), mean)),
        "per_worker": {s.device: s.processed for s in stats},
        "p99_ms": max(s.p99_ms for s in stats),
        "loadavg_1m": os.getloadavg()[0],
    }


def bare_run(args: argparse.Namespace, devices: list[str], payload: Any) -> tuple[float, float]:
    """The same sessions invoked in a tight loop, one thread each, no Python work around
    them: what this machine can do right now, to compare the workers against."""
    import numpy as np

    from edgetpud.runtime import open_session

    sessions = [open_session(args.models / MODEL, d, library=str(args.library)) for d in devices]
    spec = sessions[0].info.inputs[0]
    inputs = [np.zeros(spec.shape, dtype=np.uint8)]
    counts = [0] * len(sessions)
    stop = threading.Event()

    def loop(i: int) -> None:
        invoke = sessions[i].invoke
        while not stop.is_set():
            invoke(inputs)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    time.sleep(args.warmup)
    n0, t0, c0 = sum(counts), time.perf_counter(), time.process_time()
    time.sleep(args.seconds)
    n1, t1, c1 = sum(counts), time.perf_counter(), time.process_time()
    stop.set()
    for t in threads:
        t.join()
    for s in sessions:
        s.close()
    return (n1 - n0) / (t1 - t0), (c1 - c0) * 1000.0 / max(n1 - n0, 1)


def measure_invoke_ms(args: argparse.Namespace, device: str, n: int = 300) -> float:
    """Mean wall time of one bare invoke on `device`, as the caller sees it."""
    import numpy as np

    from edgetpud.runtime import open_session

    session = open_session(args.models / MODEL, device, library=str(args.library))
    inputs = [np.zeros(session.info.inputs[0].shape, dtype=np.uint8)]
    for _ in range(20):
        session.invoke(inputs)
    t0 = time.perf_counter()
    for _ in range(n):
        session.invoke(inputs)
    took = (time.perf_counter() - t0) * 1000.0 / n
    session.close()
    return took


def calibrate(args: argparse.Namespace, control: Any, device: str) -> tuple[float, float]:
    """The library's invoke_ms that makes one invoke take args.invoke_ms as the caller sees it
    (timer overshoot and the library's own work otherwise add 0.2-0.6 ms here)."""
    setting = args.invoke_ms
    seen = args.invoke_ms
    for _ in range(3):
        control.set(invoke_ms=round(setting, 3))
        seen = measure_invoke_ms(args, device)
        setting = max(0.0, setting - (seen - args.invoke_ms))
    control.set(invoke_ms=round(setting, 3))
    return setting, seen


def make_payload(args: argparse.Namespace) -> Any:
    import numpy as np
    from PIL import Image

    image = Image.open(args.models / "cat.bmp").convert("RGB").resize((224, 224))
    if args.payload == "tensor":
        from edgetpud.modelfile import inspect_model

        (spec,) = inspect_model(args.models / MODEL).inputs
        height, width = spec.shape[1], spec.shape[2]
        return np.asarray(image.resize((width, height)), dtype=np.uint8).tobytes()
    if args.payload == "array":
        return np.asarray(image, dtype=np.uint8)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> int:
    args = parse_args()
    if not args.library.is_file():
        sys.exit(f"{args.library} is missing: run `make {args.library.relative_to(ROOT)}`")
    if not (args.models / MODEL).is_file():
        sys.exit(f"{args.models / MODEL} is missing: point --models at ../shared/models")
    ensure_umockdev()

    from tests.support.fakelib import CONTROL_ENV, Accelerators, Control

    tmp = Path(tempfile.mkdtemp(prefix="bench_workers."))
    control = Control(tmp / "fake_edgetpu.control")
    os.environ[CONTROL_ENV] = str(control.path)
    control.set(mode="simulate", invoke_ms=args.invoke_ms, swap_ms=0)
    bed = Accelerators()
    ports = [f"2-{i + 1}" for i in range(args.devices)]
    for port in ports:
        bed.add_usb(port)
    devices = [f"usb:{port}" for port in ports]

    nominal_seen = measure_invoke_ms(args, devices[0])
    setting = args.invoke_ms
    if args.calibrate:
        setting, seen = calibrate(args, control, devices[0])
        print(
            f"calibrated: invoke_ms={setting:.3f} in the library gives {seen:.3f} ms per invoke "
            f"(invoke_ms={args.invoke_ms:g} gave {nominal_seen:.3f} ms)"
        )
    else:
        print(
            f"one invoke at invoke_ms={args.invoke_ms:g} takes {nominal_seen:.3f} ms as the caller "
            "sees it (timer overshoot and the library's own work); --calibrate compensates"
        )
    ceiling = args.devices * 1000.0 / args.invoke_ms
    target = TARGET_SHARE * ceiling
    payload = make_payload(args)
    print(
        f"{args.devices} simulated Edge TPUs x {args.invoke_ms:g} ms/invoke, "
        f"{args.interpreters} interpreter(s) each: ceiling {ceiling:.0f}/s, "
        f"target {target:.0f}/s; payload {args.payload}; {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval / 1000.0)
    print(
        f"{'run':>3} {'inf/s':>8} {'% ceil':>7} {'bare/s':>7} {'% bare':>7} {'queue':>7} {'pre':>6} "
        f"{'invoke':>7} {'post':>6} {'cpu/req':>7} {'bare':>5}  load"
    )
    runs = []
    try:
        for i in range(args.runs):
            r = one_run(args, devices, payload)
            r["bare_rate"], r["bare_cpu_ms"] = (
                bare_run(args, devices, payload) if args.bare else (0.0, 0.0)
            )
            runs.append(r)
            m = r["mean_ms"]
            bare = r["bare_rate"]
            share = f"{100 * r['rate'] / bare:>6.1f}%" if bare else f"{'-':>7}"
            print(
                f"{i + 1:>3} {r['rate']:>8.0f} {100 * r['rate'] / ceiling:>6.1f}% {bare:>7.0f} {share} "
                f"{m['queue']:>7.2f} {m['preprocess']:>6.3f} {m['invoke']:>7.3f} "
                f"{m['postprocess']:>6.3f} {r['cpu_ms_per_result']:>7.3f} {r['bare_cpu_ms']:>5.3f}  "
                f"{r['loadavg_1m']:.2f}"
            )
    finally:
        bed.close()
        shutil.rmtree(tmp, ignore_errors=True)
    rates = [r["rate"] for r in runs]
    best, median = max(rates), statistics.median(rates)
    bares = [r["bare_rate"] for r in runs if r["bare_rate"]]
    if bares:
        print(
            f"bare invoke loops on the same sessions: best {max(bares):.0f}/s, "
            f"median {statistics.median(bares):.0f}/s (this machine's ceiling right now)"
        )
    verdict = "meets" if best >= target else "misses"
    print(
        f"best {best:.0f}/s ({100 * best / ceiling:.1f}%), median {median:.0f}/s "
        f"({100 * median / ceiling:.1f}%): {verdict} the {TARGET_SHARE:.0%} target"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "schema": "edgetpud.bench.workers/1",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "params": {
            "devices": args.devices,
            "invoke_ms": args.invoke_ms,
            "seconds": args.seconds,
            "payload": args.payload,
            "interpreters_per_worker": args.interpreters,
            "model": MODEL,
            "calibrated": args.calibrate,
            "library_invoke_ms": setting,
            "seen_invoke_ms_at_nominal": nominal_seen,
            "switch_interval_ms": args.switch_interval or sys.getswitchinterval() * 1000.0,
        },
        "ceiling_per_s": ceiling,
        "target_per_s": target,
        "best_per_s": best,
        "median_per_s": median,
        "bare_best_per_s": max(bares, default=0.0),
        "bare_median_per_s": statistics.median(bares) if bares else 0.0,
        "runs": runs,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0 if best >= target else 1


if __name__ == "__main__":
    sys.exit(main())
