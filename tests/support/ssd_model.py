"""A tiny SSD-shaped detection model: four outputs like TFLite_Detection_PostProcess.

Written with tests/support/runtime.py's `tflite_bytes`. The graph is real
(four ADD operators run by the TFLite CPU kernels) but its detections are
constants: `boxes` [1, N, 4] (ymin, xmin, ymax, xmax, normalised to the model
input), `classes` [1, N], `scores` [1, N], `count` [1] — so a test knows exactly
which boxes the model "sees" in its input and can check how they are mapped
back to the source image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flatbuffers import flexbuffers

from tests.support.runtime import BUILTIN_ADD, Executable, Op, Tensor, tflite_bytes


def _const(name: str, value: np.ndarray) -> Tensor:
    """A float32 constant tensor holding `value`."""
    data = np.ascontiguousarray(value, np.float32)
    return Tensor(name, list(data.shape), "float32", data=data.tobytes())


def ssd_model(
    boxes: np.ndarray,
    classes: Sequence[int],
    scores: Sequence[float],
    size: tuple[int, int] = (64, 48),
) -> bytes:
    """Model bytes: input uint8 [1, height, width, 3] (size = (width, height)), four outputs."""
    n = len(classes)
    width, height = size
    consts = {
        "boxes": np.asarray(boxes, np.float32).reshape(1, n, 4),
        "classes": np.asarray(classes, np.float32).reshape(1, n),
        "scores": np.asarray(scores, np.float32).reshape(1, n),
        "count": np.asarray([n], np.float32),
    }
    tensors = [Tensor("image", [1, height, width, 3], "uint8")]
    ops = []
    outputs = []
    for name, value in consts.items():
        base = len(tensors)
        tensors.append(_const(f"{name}_const", value))
        tensors.append(_const(f"{name}_zero", np.zeros_like(value)))
        tensors.append(Tensor(name, list(value.shape), "float32"))
        ops.append(Op([base, base + 1], [base + 2], builtin=BUILTIN_ADD))
        outputs.append(base + 2)
    return tflite_bytes(tensors, ops, [0], outputs, description="edgetpud test SSD")


def write_ssd_model(path: Path, **kwargs: Any) -> Path:
    path.write_bytes(ssd_model(**kwargs))
    return path


def ssd_edgetpu_model(size: tuple[int, int] = (300, 300), n: int = 20, token: int = 0x55D) -> bytes:
    """An SSD-shaped Edge TPU build: one `edgetpu-custom-op` from the uint8 image to the four
    float32 outputs, as edgetpu_compiler lays out a model whose post-processing it kept.

    Only a (simulated) Edge TPU runs it: the fake libedgetpu in simulate mode claims the op,
    sleeps `invoke_ms` and fills every output with its byte pattern (tests/support/fakelib.py
    `expected_outputs`); `zero_count_frame` makes that pattern read as zero detections.
    """
    width, height = size
    tensors = [
        Tensor("image", [1, height, width, 3], "uint8"),
        Tensor("boxes", [1, n, 4], "float32"),
        Tensor("classes", [1, n], "float32"),
        Tensor("scores", [1, n], "float32"),
        Tensor("count", [1], "float32"),
    ]
    op = Op([0], [1, 2, 3, 4], custom="edgetpu-custom-op", executables=[Executable(token=token)])
    return tflite_bytes(tensors, [op], [0], [1, 2, 3, 4])


def zero_count_frame(shape: Sequence[int]) -> np.ndarray:
    """A uint8 frame whose simulated outputs hold a count of 0 (no detections).

    The fake library writes (sum of input bytes + i) & 0xFF into byte i of each output; with
    a sum of 253 the float32 count is the bytes FD FE FF 00, about 2.3e-38, i.e. 0.
    """
    frame = np.zeros(shape, np.uint8)
    frame.flat[0] = 253
    return frame


def postprocess_model(
    boxes: Sequence[Sequence[float]],
    class_scores: Sequence[Sequence[float]],
    *,
    size: tuple[int, int] = (64, 48),
    max_detections: int = 20,
    score_threshold: float = 0.1,
    iou_threshold: float = 0.5,
) -> bytes:
    """An SSD tail that ends in TFLite's own `TFLite_Detection_PostProcess` custom op.

    One anchor per box in `boxes` (normalised ymin, xmin, ymax, xmax) with all-zero box
    encodings, so each anchor decodes to exactly its box; `class_scores[i]` are anchor
    i's scores for classes 0..K-1 (a background column is put in front, which the op
    skips). The op itself then picks the best class per anchor, drops scores under
    `score_threshold`, runs non-maximum suppression at `iou_threshold` and sorts: a test
    checks what it kept, not what the model was given. Input: uint8 [1, height, width, 3]
    (unused by the graph, as in ssd_model).
    """
    n = len(boxes)
    scores = np.asarray(class_scores, np.float32).reshape(n, -1)
    k = scores.shape[1]
    b_ = np.asarray(boxes, np.float32).reshape(n, 4)
    anchors = np.stack(
        [
            (b_[:, 0] + b_[:, 2]) / 2,
            (b_[:, 1] + b_[:, 3]) / 2,
            b_[:, 2] - b_[:, 0],
            b_[:, 3] - b_[:, 1],
        ],
        axis=1,
    ).astype(np.float32)
    width, height = size
    consts = {
        "box_encodings": np.zeros((1, n, 4), np.float32),
        "class_predictions": np.concatenate([np.zeros((n, 1), np.float32), scores], 1).reshape(
            1, n, k + 1
        ),
        "anchors": anchors,
    }
    tensors = [
        Tensor("image", [1, height, width, 3], "uint8"),
        *(_const(name, v) for name, v in consts.items()),
        Tensor("boxes", [1, max_detections, 4], "float32"),
        Tensor("classes", [1, max_detections], "float32"),
        Tensor("scores", [1, max_detections], "float32"),
        Tensor("count", [1], "float32"),
    ]
    fbb = flexbuffers.Builder()
    with fbb.Map():
        for key, value in (
            ("max_detections", max_detections),
            ("max_classes_per_detection", 1),
            ("detections_per_class", 100),
            ("num_classes", k),
        ):
            fbb.Key(key)
            fbb.Int(value)
        fbb.Key("use_regular_nms")
        fbb.Bool(False)
        for key, fvalue in (
            ("nms_score_threshold", score_threshold),
            ("nms_iou_threshold", iou_threshold),
            ("y_scale", 10.0),
            ("x_scale", 10.0),
            ("h_scale", 5.0),
            ("w_scale", 5.0),
        ):
            fbb.Key(key)
            fbb.Float(fvalue)
    options = bytes(fbb.Finish())
    op = Op([1, 2, 3], [4, 5, 6, 7], custom="TFLite_Detection_PostProcess", raw_options=options)
    return tflite_bytes(
        tensors,
        [op],
        [0],
        [4, 5, 6, 7],
        description="edgetpud test SSD with TFLite_Detection_PostProcess",
    )
