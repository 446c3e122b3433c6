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


@dataclass(frozen=True)
class FramePlan:
    """How frames with one header become the model's input: worked out once per header
    (Frigate sends the same header with every frame), applied to each frame's bytes."""

    dtype: np.dtype[Any]
    size: int  # the bytes the header promises
    reshape: tuple[int, ...] = ()  # the array the model takes (or HxWx3 to resize)
    width: int = 0
    height: int = 0
    refused: str = ""  # why no frame with this header fits (after the size check)
    refused_first: str = ""  # why not, before even the size is looked at
    reshape_from: tuple[int, ...] = ()  # the header's shape, for messages

    def apply(self, buffer: memoryview) -> tuple[Any, int, int]:
        """The frame as an array the model takes (no copy), its width and height; Mismatch
        saying why when it does not fit."""
        if self.refused_first:
            raise Mismatch(self.refused_first)
        if len(buffer) != self.size:
            raise Mismatch(
                f"the header says {self.dtype.name} {list(self.reshape_from)} ({self.size} "
                f"bytes) but {len(buffer)} came"
            )
        if self.refused:
            raise Mismatch(self.refused)
        array = np.frombuffer(buffer, dtype=self.dtype).reshape(self.reshape)
        return array, self.width, self.height


def plan_frame(
    shape: list[int], dtype: np.dtype[Any], spec: Any, model: str, *, resize: bool
) -> FramePlan:
    """How a frame of `shape` and `dtype` fits the model's one input `spec`
    (modelfile.TensorSpec; None when it has not one image input). `resize` (on_mismatch =
    "resize") lets an RGB uint8 frame of another size through as HxWx3 for the
    preprocessor to stretch."""
    size = math.prod(shape) * dtype.itemsize
    header = tuple(shape)
    if spec is None:
        return FramePlan(dtype, size, refused_first="the model does not have one image input")
    wanted = [max(int(d), 1) for d in spec.shape]
    image_shape = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    if len(image_shape) != 3:
        why = f"a {dtype.name} {shape} tensor is not one NHWC image"
        return FramePlan(dtype, size, refused=why, reshape_from=header)
    height, width = image_shape[0], image_shape[1]
    if dtype.name == spec.dtype and image_shape == wanted[-3:]:
        return FramePlan(dtype, size, tuple(wanted), width, height, reshape_from=header)
    resizable = dtype == np.uint8 and image_shape[2] == 3 and spec.dtype == "uint8"
    if resize and resizable:
        return FramePlan(dtype, size, tuple(image_shape), width, height, reshape_from=header)
    why = (
        f"Frigate sends {dtype.name} {shape} but model {model} takes {spec.dtype} "
        f"{wanted}; set Frigate's model width/height to {wanted[2]}x{wanted[1]} "
        f"(input_tensor nhwc, input_pixel_format rgb, input_dtype int)"
        + ("" if not resizable else ', or frigate.on_mismatch = "resize" in edgetpud')
    )
    return FramePlan(dtype, size, refused=why, reshape_from=header)


def fit_frame(
    buffer: memoryview,
    shape: list[int],
    dtype: np.dtype[Any],
    spec: Any,
    model: str,
    *,
    resize: bool,
) -> tuple[Any, int, int]:
    """The tensor as an array the model takes (no copy), and the frame's width and height;
    Mismatch saying why it does not fit (plan_frame, then FramePlan.apply)."""
    return plan_frame(shape, dtype, spec, model, resize=resize).apply(buffer)


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
