#!/usr/bin/env python3
"""6. CPU fallback: the real mobilenet_v1_0.5_160_quant.tflite on the CPU.

What a model runs on when no Edge TPU is free (`cpu_model`, `runtime.cpu_threads`):
a real interpreter with the real model, through tflite-runtime (in .venv, numpy 1.x)
and through ai-edge-litert (in .venv-litert: it needs numpy 2, which tflite-runtime
2.14 cannot use), with 1 and 2 interpreter threads. Each measurement is a fresh
process running invoke in a loop on a fixed 160x160x3 input; figure: inferences/s.

    .venv/bin/python -m bench.cpu_fallback [--quick]
    .venv/bin/python -m bench.cpu_fallback --child tflite_runtime --threads 2 --seconds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

NAME = "cpu_fallback"
MODEL = "mobilenet_v1_0.5_160_quant.tflite"
LITERT_PYTHON = ROOT / ".venv-litert" / "bin" / "python"


def child(runtime: str, model: Path, threads: int, seconds: float) -> dict[str, Any]:
    """Runs in the measuring process: invoke in a loop, report inferences/s."""
    import numpy as np

    if runtime == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter
    else:
        from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(model), num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    data = np.random.default_rng(0).integers(0, 256, inp["shape"], dtype=np.uint8)
    interpreter.set_tensor(inp["index"], data)
    for _ in range(5):  # warm up
        interpreter.invoke()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        interpreter.invoke()
        n += 1
    elapsed = time.perf_counter() - t0
    try:
        from importlib import metadata

        version = metadata.version(
            "tflite-runtime" if runtime == "tflite_runtime" else "ai-edge-litert"
        )
    except Exception:
        version = "unknown"
    return {
        "runtime": runtime,
        "version": version,
        "numpy": np.__version__,
        "threads": threads,
        "inferences": n,
        "per_s": round(n / elapsed, 1),
        "ms_per_inference": round(1000 * elapsed / max(n, 1), 3),
    }


def run(quick: bool = False) -> dict[str, Any]:
    from bench import common

    seconds = 1.0 if quick else 5.0
    model = common.MODELS / MODEL
    record = common.new_record(
        NAME,
        quick,
        {"model": MODEL, "seconds": seconds, "input": "fixed random 160x160x3 uint8"},
    )
    pythons = {"tflite_runtime": sys.executable, "ai_edge_litert": str(LITERT_PYTHON)}
    figures: list[dict[str, Any]] = []
    rows = []
    for runtime, python in pythons.items():
        if not Path(python).exists():
            note = f"{python} missing: run `make bench` (it installs ai-edge-litert there)"
            figures.append({"runtime": runtime, "error": note})
            rows.append([runtime, "-", "-", note])
            continue
        for threads in (1, 2):
            proc = subprocess.run(
                [python, "-m", "bench.cpu_fallback", "--child", runtime,
                 "--threads", str(threads), "--seconds", str(seconds), "--model", str(model)],
                capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
            )  # fmt: skip
            if proc.returncode != 0:
                note = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
                figures.append({"runtime": runtime, "threads": threads, "error": note})
                rows.append([runtime, threads, "-", note])
                continue
            fig = json.loads(proc.stdout)
            figures.append(fig)
            rows.append(
                [f"{runtime} {fig['version']}", threads, fig["per_s"], fig["ms_per_inference"]]
            )
            print(f"  {runtime} x{threads}: {fig['per_s']:.1f}/s", flush=True)
    record["figures"] = figures
    record["table"] = common.table(["runtime", "threads", "inferences/s", "ms/inference"], rows)
    print(record["table"])
    common.write_record(NAME, record)
    return record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", choices=("tflite_runtime", "ai_edge_litert"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--model", type=Path)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.threads, args.seconds)))
        return 0
    run(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
