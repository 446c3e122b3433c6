"""Frigate's `zmq` detector protocol as data: reading requests, encoding replies. Pure.

No socket, no thread, no clock: frames come in as anything with `.bytes`, `.buffer`
and a length (pyzmq's Frame fits), answers go out as bytes. docs/frigate.md has the
protocol as Frigate's `frigate/detectors/plugins/zmq_ipc.py` implements it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

ROWS, COLUMNS = 20, 6  # Frigate's detection array: [class_id, score, y_min, x_min, y_max, x_max]
EMPTY_REPLY = bytes(ROWS * COLUMNS * 4)  # no detections, the one-frame reply form


class Frame(Protocol):
    """One message part (zmq.Frame)."""

    @property
    def bytes(self) -> bytes: ...
    @property
    def buffer(self) -> memoryview: ...
    def __len__(self) -> int: ...


class Mismatch(ValueError):
    """A frame the model cannot take: the message says both shapes and what to set."""


def split_envelope(frames: Sequence[Frame]) -> tuple[tuple[Any, ...], list[Any]] | None:
    """(routing envelope up to and including the empty delimiter, body) of a ROUTER
    message; None when there is no delimiter (not a REQ client, or a DEALER not speaking
    REQ's envelope)."""
    split = next((i for i, f in enumerate(frames) if not len(f)), -1) + 1
    if split == 0:
        return None
    return tuple(frames[:split]), list(frames[split:])


def read_header(data: bytes) -> tuple[list[int], np.dtype[Any]]:
    """A request header's tensor shape and dtype; ValueError, KeyError or TypeError when
    it is not JSON with a positive `shape` and a number `dtype`."""
    header = json.loads(data)
    shape = [int(d) for d in header["shape"]]
    dtype = np.dtype(str(header["dtype"]))
    if not shape or len(shape) > 8 or any(d < 1 for d in shape):
        raise ValueError(f"shape {shape} is not a tensor's")
    if dtype.kind not in "uif":
        raise ValueError(f"dtype {dtype.name} is not a number type")
    return shape, dtype


def fit_frame(
    buffer: memoryview,
    shape: list[int],
    dtype: np.dtype[Any],
    spec: Any,
    model: str,
    *,
    resize: bool,
) -> tuple[Any, int, int]:
    """The tensor as an array the model takes (no copy), and the frame's width and height.

    `spec` is the model's one input (modelfile.TensorSpec), None when it has not one
    image input. `resize` (on_mismatch = "resize") lets an RGB uint8 frame of another
    size through as HxWx3 for the preprocessor to stretch. Raises Mismatch saying why.
    """
    if spec is None:
        raise Mismatch("the model does not have one image input")
    wanted = [max(int(d), 1) for d in spec.shape]
    size = math.prod(shape) * dtype.itemsize
    if size != len(buffer) or not shape:
        raise Mismatch(
            f"the header says {dtype.name} {shape} ({size} bytes) but {len(buffer)} came"
        )
    image_shape = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    if len(image_shape) != 3:
        raise Mismatch(f"a {dtype.name} {shape} tensor is not one NHWC image")
    height, width = image_shape[0], image_shape[1]
    array = np.frombuffer(buffer, dtype=dtype)
    if dtype.name == spec.dtype and image_shape == wanted[-3:]:
        return array.reshape(wanted), width, height
    resizable = dtype == np.uint8 and image_shape[2] == 3 and spec.dtype == "uint8"
    if resize and resizable:
        return array.reshape(image_shape), width, height
    raise Mismatch(
        f"Frigate sends {dtype.name} {shape} but model {model} takes {spec.dtype} "
        f"{wanted}; set Frigate's model width/height to {wanted[2]}x{wanted[1]} "
        f"(input_tensor nhwc, input_pixel_format rgb, input_dtype int)"
        + ("" if not resizable else ', or frigate.on_mismatch = "resize" in edgetpud')
    )


@dataclass(frozen=True)
class Control:
    """A one-frame message, read: newer Frigate's model handshake, or what else it is."""

    kind: str  # "model_request", "model_data", "unknown" (JSON, not a handshake), "invalid"
    model_name: str = ""  # the model file Frigate named
    keys: tuple[str, ...] = ()  # the keys of an unknown message
    reply: bytes = b""  # what to answer ("" for unknown and invalid: no detections)


# Always "loaded": edgetpud serves its own configured model, and a Frigate told otherwise
# would send its model file, then never detect until restarted.
_LOADED = json.dumps({"model_available": True, "model_loaded": True}).encode()
_NOT_SAVED = json.dumps({"model_saved": False, "model_loaded": False}).encode()


def read_control(data: bytes) -> Control:
    """A one-frame message and the answer the protocol gives it."""
    try:
        header = json.loads(data)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        return Control("invalid")
    name = str(header.get("model_name", ""))
    if header.get("model_request"):
        return Control("model_request", name, reply=_LOADED)
    if header.get("model_data"):
        return Control("model_data", name, reply=_NOT_SAVED)
    return Control("unknown", name, keys=tuple(sorted(header)))


def rows(detections: Any, width: int, height: int, meta: Mapping[str, Any]) -> Any:
    """The `detect` postprocessor's output as Frigate's float32 [20, 6] rows.

    Boxes come in model-input pixels, or in the frame's pixels when the frame was
    resized to fit (`meta["image_size"]`); either way they are divided by the size of
    the frame Frigate sent, which is what its own edgetpu detector returns. Best first,
    at most 20, unused rows zero.
    """
    out = np.zeros((ROWS, COLUMNS), np.float32)
    size = meta.get("image_size")
    w, h = (
        (size[0], size[1])
        if isinstance(size, (list, tuple)) and len(size) == 2
        else (width, height)
    )
    for i, found in enumerate(detections[:ROWS] if isinstance(detections, list) else ()):
        box = found["box"]
        out[i] = (
            found["id"],
            found["score"],
            box["ymin"] / h,
            box["xmin"] / w,
            box["ymax"] / h,
            box["xmax"] / w,
        )
    return out
