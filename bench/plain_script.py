#!/usr/bin/env python3
"""What users write today instead of edgetpud: one thread per Edge TPU, each running
preprocess -> invoke -> postprocess -> publish in a loop (the pattern of Coral's
two-models-two-TPUs example, plus an MQTT publish).

It does the same work per inference as the daemon in bench/efficiency.py: a uint8
frame (cycled from 8 noise frames) fitted to the model input (with PIL bilinear only
when its size differs; at the model's size it is just copied into the input tensor), invoke through tflite_runtime with
`load_delegate(library, {"device": "usb:N"})`, top-3 with labels, a JSON payload
published with paho to `<prefix>/<node>/models/m<N>/results`.

    .venv/bin/python -m bench.plain_script --devices 4 --model M --labels L --library F \
        --port 1883 --seconds 10
    .venv/bin/python -m bench.plain_script --assign A.tflite@0 --assign B.tflite@0 ...

With `--assign MODEL@N` (repeatable) each thread runs its own model on usb:N, and two
threads may share a TPU, as a hand-made round-robin spread of models over TPUs does.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from PIL import Image
from tflite_runtime.interpreter import Interpreter, load_delegate


def load_labels(path: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines()):
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and parts[0].isdigit():
            out[int(parts[0])] = parts[1]
        elif parts:
            out[n] = line.strip()
    return out


def worker(  # noqa: PLR0917 - a thread target
    index: int,
    model: Path,
    device: int,
    args: argparse.Namespace,
    client: Any,
    labels: dict[int, str],
    frames: list[Any],
    stop: threading.Event,
    counts: list[int],
) -> None:
    delegate = load_delegate(str(args.library), {"device": f"usb:{device}"})
    interpreter = Interpreter(model_path=str(model), experimental_delegates=[delegate])
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    _, height, width, _ = inp["shape"]
    scale, zero = out["quantization"]
    if not frames:  # --frame 0: frames at this model's input size
        rng = np.random.default_rng(index)
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(8)]
    topic = f"{args.prefix}/{args.node}/models/m{index}/results"
    n = 0
    if args.bare:  # the device alone: invoke in a loop, no Python work around it
        interpreter.set_tensor(inp["index"], frames[0][np.newaxis, ...])
        while not stop.is_set():
            interpreter.invoke()
            n += 1
            counts[index] = n
        return
    while not stop.is_set():
        # preprocess: fit the frame to the model input
        frame = frames[n % len(frames)]
        if frame.shape[:2] != (height, width):
            image = Image.fromarray(frame, "RGB").resize(
                (int(width), int(height)), Image.Resampling.BILINEAR
            )
            frame = np.asarray(image, dtype=np.uint8)
        interpreter.set_tensor(inp["index"], frame[np.newaxis, ...])
        t0 = time.monotonic()
        interpreter.invoke()
        t1 = time.monotonic()
        # postprocess: top 3 with labels
        scores = interpreter.get_tensor(out["index"])[0]
        top = np.argpartition(scores, -3)[-3:]
        top = top[np.argsort(scores[top])[::-1]]
        result = [
            {
                "id": int(i),
                "label": labels.get(int(i), str(i)),
                "score": float((int(scores[i]) - zero) * scale),
            }
            for i in top
        ]
        payload = json.dumps(
            {"model": f"m{index}", "frame": n, "invoke_ms": (t1 - t0) * 1000, "result": result}
        )
        client.publish(topic, payload, qos=args.qos)
        n += 1
        counts[index] = n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=0, help="one thread per TPU, each on --model")
    p.add_argument("--model", type=Path)
    p.add_argument(
        "--assign",
        action="append",
        default=[],
        metavar="MODEL@N",
        help="a thread running MODEL on usb:N (repeatable; instead of --devices/--model)",
    )
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--library", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--qos", type=int, default=0)
    p.add_argument("--prefix", default="bench")
    p.add_argument("--node", default="box")
    p.add_argument(
        "--frame", type=int, default=128, help="frame width and height (0: each model's input size)"
    )
    p.add_argument(
        "--bare",
        action="store_true",
        help="only invoke in a loop (no pre/postprocessing, no MQTT): this machine's ceiling",
    )
    p.add_argument("--warmup", type=float, default=0.0, help="seconds not counted (with --bare)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0: on SIGTERM)")
    args = p.parse_args()

    if args.assign:
        jobs = [(Path(model), int(n)) for model, _, n in (a.rpartition("@") for a in args.assign)]
    elif args.devices and args.model:
        jobs = [(args.model, i) for i in range(args.devices)]
    else:
        p.error("give --devices N with --model, or --assign MODEL@N")
    labels = load_labels(args.labels)
    rng = np.random.default_rng(0)
    frames = (
        [rng.integers(0, 256, (args.frame, args.frame, 3), dtype=np.uint8) for _ in range(8)]
        if args.frame
        else []
    )
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if not args.bare:
        client.connect(args.host, args.port)
        client.loop_start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    counts = [0] * len(jobs)
    threads = [
        threading.Thread(
            target=worker,
            args=(i, model, device, args, client, labels, frames, stop, counts),
            name=f"tpu{device}-m{i}",
            daemon=True,
        )
        for i, (model, device) in enumerate(jobs)
    ]
    for t in threads:
        t.start()
    start = time.monotonic()
    deadline = start + args.seconds if args.seconds else float("inf")
    n0, t0 = 0, start
    while not stop.wait(0.05) and time.monotonic() < deadline:
        if args.warmup and t0 == start and time.monotonic() >= start + args.warmup:
            n0, t0 = sum(counts), time.monotonic()
    n1, t1 = sum(counts), time.monotonic()
    stop.set()
    for t in threads:
        t.join(10)
    if not args.bare:
        client.disconnect()
        client.loop_stop()
    print(json.dumps({"inferences": n1 - n0, "seconds": t1 - t0, "per_s": (n1 - n0) / (t1 - t0)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
