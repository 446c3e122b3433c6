"""`edgetpud infer`: one-shot inference on image files, one JSON line per image.

A quick check of a model and a device from the shell, outside the daemon:

    edgetpud infer --model mobilenet_v1_0.25_128_quant.tflite \\
        --labels imagenet_labels.txt cat.bmp

Images are decoded with Pillow, made RGB and stretched to the model's input size.
A model with one output of N scores is treated as a classifier: the top-k classes
with dequantized scores. An SSD-style detector (boxes, classes, scores, count) gets
its detections, as the daemon's `detect` postprocessor gives them (boxes in the
image's pixels, those scoring under --threshold left out). For any other model the
output tensors' shapes and dtypes are listed instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetpud.errors import EdgetpudError, ModelError
from edgetpud.labels import Labels, fit_problem, load_labels, output_classes
from edgetpud.messages import Request
from edgetpud.modelfile import TensorSpec
from edgetpud.preprocess import decode_image, image_to_input
from edgetpud.runtime import RuntimeMissing, Session, open_session

log = logging.getLogger(__name__)

SCHEMA = "edgetpud.infer/1"
DETECT_THRESHOLD = 0.5  # the detect postprocessor's default


def main(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        _fail(f"--top-k must be 1 or more, not {args.top_k}")
        return 1
    try:
        labels = load_labels(args.labels) if args.labels else None
        session = open_session(Path(args.model), args.device, library=args.library)
    except RuntimeMissing as exc:
        _fail(str(exc.naming("--library")))
        return 1
    except EdgetpudError as exc:
        _fail(str(exc))
        return 1
    misfit = None
    if labels is not None and _is_classifier(session.info.outputs):
        misfit = fit_problem(labels, output_classes(session.info, "classify"))
    if misfit:  # results still print, with the labels given
        _fail(f"warning: {misfit}")
    failed = 0
    try:
        for image in args.images:
            try:
                record = infer_image(
                    session, Path(image), labels, args.top_k, threshold=args.threshold
                )
            except EdgetpudError as exc:
                _fail(f"{image}: {exc}")
                failed += 1
                continue
            print(json.dumps(record), flush=True)
    finally:
        session.close()
    return 1 if failed else 0


def infer_image(
    session: Session,
    image: Path,
    labels: Labels | None,
    top_k: int,
    *,
    threshold: float = DETECT_THRESHOLD,
) -> dict[str, Any]:
    """Run one image file through the session; the JSON-ready record for it."""
    started = time.perf_counter()
    try:
        data = image.read_bytes()
    except OSError as exc:
        raise ModelError(
            f"cannot read the image ({exc.strerror or exc}); check the path and permissions"
        ) from None
    meta: dict[str, Any] = {}
    tensor = image_to_input(decode_image(data), session.info, "stretch", meta)
    prepared = time.perf_counter()
    outputs = session.invoke([tensor])
    invoked = time.perf_counter()
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "image": str(image),
        "image_size": meta.get("image_size"),
        "model": str(session.info.path),
        "device": session.device,
        "runtime": session.runtime,
    }
    if session.delegate_device:
        record["delegate_device"] = session.delegate_device
    if _is_classifier(session.info.outputs):
        record["classes"] = top_classes(outputs[0], session.info.outputs[0], labels, top_k)
    elif _is_detector(session.info.outputs):
        record["detections"] = detections(outputs, session.info, labels, meta, threshold)
    else:
        record["outputs"] = [
            {"name": spec.name, "shape": list(out.shape), "dtype": str(out.dtype)}
            for spec, out in zip(session.info.outputs, outputs)
        ]
    finished = time.perf_counter()
    record["timing_ms"] = {
        "preprocess": round((prepared - started) * 1000.0, 3),
        "invoke": round(session.last_invoke_ms, 3),
        "postprocess": round((finished - invoked) * 1000.0, 3),
    }
    return record


def top_classes(
    output: npt.NDArray[Any], spec: TensorSpec, labels: Labels | None, top_k: int
) -> list[dict[str, Any]]:
    """The top-k classes of a score vector, scores dequantized by the tensor's scale."""
    raw = output.reshape(-1)
    scores = (raw.astype(np.float64) - spec.zero_point) * spec.scale if spec.quantized else raw
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [
        {
            "id": int(i),
            "label": labels.name(int(i)) if labels is not None else str(int(i)),
            "score": round(float(scores[i]), 6),
        }
        for i in order
    ]


def detections(
    outputs: list[npt.NDArray[Any]],
    info: Any,
    labels: Labels | None,
    meta: dict[str, Any],
    threshold: float,
) -> Any:
    """What the `detect` postprocessor makes of these outputs (the plugin itself, so that
    `infer` and the daemon agree)."""
    from edgetpud import plugins

    detect = plugins.registry().get("postprocess", "detect")
    config = detect.Config(threshold=threshold, max_detections=1000)
    plugin: Any = detect(config, info, labels)  # type: ignore[call-arg]
    return plugin.process(outputs, Request(model=str(info.path), payload=b"", meta=meta))


def _is_detector(outputs: tuple[TensorSpec, ...]) -> bool:
    """Four outputs, one of them [1, N, 4] boxes: what TFLite_Detection_PostProcess gives."""
    return len(outputs) == 4 and any(len(o.shape) == 3 and o.shape[-1] == 4 for o in outputs)


def _is_classifier(outputs: tuple[TensorSpec, ...]) -> bool:
    if len(outputs) != 1:
        return False
    dims = [d for d in outputs[0].shape if d != 1]
    return len(dims) == 1 and dims[0] > 1


def _fail(message: str) -> None:
    print(f"edgetpud infer: {' '.join(message.split())}", file=sys.stderr)
