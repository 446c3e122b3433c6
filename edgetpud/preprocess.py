"""Requests → input tensors: decode, RGB, resize, quantize.

`make_preprocess(resize)` returns the function a worker calls per request. By
request kind:

- "image": encoded bytes (JPEG, PNG, BMP, ... anything Pillow reads) are decoded,
  turned upright by their EXIF orientation, converted to RGB and fitted to the
  model's input by `resize`: "stretch" (ignore aspect), "letterbox" (keep aspect,
  pad with black) or "center-crop" (keep aspect, cut the overhang).
- "array": a numpy array. One already shaped and typed like the input (with or
  without the batch dimension) is used as is; an HxWx3 uint8 image of another
  size goes through the image path.
- "tensor": raw input-tensor bytes, exactly the input's size.

Image pixels are then put into the input tensor's type: uint8 inputs take the
pixel values as they are and int8 inputs take them shifted by -128, i.e. the
0..255 pixel range covers the tensor's whole quantized range, which is how
quantized image models (Coral's included) are trained; float32 inputs take
(pixel - 127.5) / 127.5, the [-1, 1] range of float MobileNets.

The source image size and the transform are recorded in `request.meta`
("image_size" = [w, h]; "transform" = {"scale": [sx, sy], "offset": [ox, oy]}
with model_px = source_px * scale + offset) so postprocessors can map boxes
back to source-image pixels.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from edgetpud.errors import RequestError
from edgetpud.messages import Request
from edgetpud.payloads import (
    DEFAULT_MAX_DECODE_BYTES,
    bomb_problem,
    budget_problem,
    image_error_detail,
    tensor_hint,
)
from edgetpud.plugins import ModelInfo, Resize, TensorInfo

log = logging.getLogger(__name__)

RESIZE_MODES: tuple[Resize, ...] = ("stretch", "letterbox", "center-crop")
_DTYPES = {"uint8": np.uint8, "int8": np.int8, "float32": np.float32}

Preprocess = Callable[[Request, ModelInfo], list[NDArray[Any]]]


@dataclass(frozen=True)
class Transform:
    """How source pixels map onto model-input pixels: model = source * scale + offset."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_meta(self) -> dict[str, list[float]]:
        return {"scale": [self.scale_x, self.scale_y], "offset": [self.offset_x, self.offset_y]}

    @classmethod
    def from_meta(cls, meta: Any) -> Transform | None:
        try:
            (sx, sy), (ox, oy) = meta["scale"], meta["offset"]
            return cls(float(sx), float(sy), float(ox), float(oy))
        except (KeyError, TypeError, ValueError):
            return None

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.offset_x) / self.scale_x, (y - self.offset_y) / self.scale_y


def decode_image(
    data: bytes | bytearray | memoryview,
    info: ModelInfo | None = None,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> Image.Image:
    """Encoded bytes → an upright RGB image; RequestError when they are not an image, or
    when decoding would take more than `max_decode_bytes` (judged from the header, before
    any pixel is decoded; see `payloads.decode_cost`).

    With the model's `info` (a request), the error also says how to send its raw input
    tensor instead; without it (`edgetpud infer` on a file) it only asks for an image.
    """
    if not data:
        if info is None:
            raise RequestError("the file is empty; use a JPEG, PNG or BMP image")
        raise RequestError("the request is empty; send an encoded image (JPEG, PNG or BMP)")
    try:
        with warnings.catch_warnings():
            # the budget below is the limit; Pillow's own warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(bytes(data)))
            problem = budget_problem(opened.mode, *opened.size, max_decode_bytes)
            if problem is None:
                opened.load()
    except Image.DecompressionBombError as exc:
        raise RequestError(bomb_problem(exc, max_decode_bytes)) from None
    except Exception as exc:
        detail = image_error_detail(exc, default="an unknown format, or truncated or corrupt")
        if info is None:
            raise RequestError(
                f"not a readable image ({detail}); use a complete JPEG, PNG or BMP file"
            ) from None
        raise RequestError(
            f"the request is not a readable image ({detail}); send a complete JPEG, PNG or BMP "
            f"file{_tensor_hint(info)}"
        ) from None
    if problem is not None:
        opened.close()
        raise RequestError(problem)
    image: Image.Image = ImageOps.exif_transpose(opened) or opened
    return image if image.mode == "RGB" else image.convert("RGB")


def image_input(info: ModelInfo) -> tuple[TensorInfo, int, int]:
    """The model's image input and its (width, height); RequestError if it has none."""
    if len(info.inputs) != 1:
        raise RequestError(
            f"the model has {len(info.inputs)} inputs; images can only feed a one-input model, "
            "send raw tensors instead"
        )
    spec = info.inputs[0]
    shape = list(spec.shape)
    if len(shape) == 4 and shape[0] in (1, -1) and shape[3] == 3:
        return spec, shape[2], shape[1]
    raise RequestError(
        f"the model input {spec.name} has shape {shape}, not [1, height, width, 3]; "
        "send raw tensors instead of images"
    )


def fit(
    image: Image.Image, width: int, height: int, resize: Resize
) -> tuple[Image.Image, Transform]:
    """Fit an RGB image into width x height by the resize mode."""
    w, h = image.size
    if resize == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR), Transform(
            width / w, height / h, 0.0, 0.0
        )
    if resize == "letterbox":
        scale = min(width / w, height / h)
    elif resize == "center-crop":
        scale = max(width / w, height / h)
    else:
        raise ValueError(f"unknown resize mode {resize!r}")
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    off_x, off_y = (width - new_w) // 2, (height - new_h) // 2
    canvas = Image.new("RGB", (width, height))
    canvas.paste(resized, (off_x, off_y))
    return canvas, Transform(new_w / w, new_h / h, float(off_x), float(off_y))


def quantize(pixels: NDArray[Any], spec: TensorInfo) -> NDArray[Any]:
    """uint8 RGB pixels → the input tensor's dtype (see the module docstring)."""
    if spec.dtype == "uint8":
        return pixels.astype(np.uint8, copy=False)
    if spec.dtype == "int8":
        return (pixels.astype(np.int16) - 128).astype(np.int8)
    if spec.dtype == "float32":
        return (pixels.astype(np.float32) - 127.5) / 127.5
    raise RequestError(
        f"the model input {spec.name} is {spec.dtype}; images can feed uint8, int8 or float32 "
        "inputs only, send raw tensors instead"
    )


def image_to_input(
    image: Image.Image, info: ModelInfo, resize: Resize, meta: dict[str, Any]
) -> NDArray[Any]:
    """An RGB image → the model's batched input tensor, recording size and transform in meta."""
    spec, width, height = image_input(info)
    fitted, transform = fit(image, width, height, resize)
    meta["image_size"] = [image.size[0], image.size[1]]
    meta["transform"] = transform.to_meta()
    pixels = np.asarray(fitted, dtype=np.uint8)
    return quantize(pixels, spec)[np.newaxis, ...]


def _input_nbytes(spec: TensorInfo) -> int:
    """How many bytes a raw tensor for this input has."""
    return math.prod(max(d, 1) for d in spec.shape) * np.dtype(_dtype(spec)).itemsize


def _tensor_hint(info: ModelInfo) -> str:
    """How to send this model's raw input tensor instead of an image; "" when it cannot say."""
    if len(info.inputs) != 1:
        return ""
    spec = info.inputs[0]
    try:
        nbytes = _input_nbytes(spec)
    except RequestError:  # a type numpy does not know: no size to give
        return ""
    shape = "x".join(str(max(d, 1)) for d in spec.shape)
    return tensor_hint(nbytes, f"{shape} {spec.dtype}")


def tensor_from_bytes(data: bytes | bytearray | memoryview, spec: TensorInfo) -> NDArray[Any]:
    """Raw tensor bytes → an array shaped like the input; RequestError on a size mismatch."""
    dtype = _dtype(spec)
    shape = [max(d, 1) for d in spec.shape]
    expected = _input_nbytes(spec)
    if len(data) != expected:
        raise RequestError(
            f"the tensor request has {len(data)} bytes but input {spec.name} needs {expected} "
            f"({spec.dtype} {shape}); send exactly one input tensor"
        )
    return np.frombuffer(bytes(data), dtype=dtype).reshape(shape)


def array_to_input(
    array: NDArray[Any], info: ModelInfo, resize: Resize, meta: dict[str, Any]
) -> list[NDArray[Any]]:
    """A numpy array: the input itself (batched or not), or an HxWx3 uint8 image."""
    if not isinstance(array, np.ndarray):
        raise RequestError(f"an array request needs a numpy array, got {type(array).__name__}")
    if len(info.inputs) == 1:
        spec = info.inputs[0]
        shape = tuple(max(d, 1) for d in spec.shape)
        if array.dtype == _dtype(spec):
            if array.shape == shape:
                return [array]
            if (1, *array.shape) == shape:
                return [array[np.newaxis, ...]]
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        image = Image.fromarray(array, "RGB")
        return [image_to_input(image, info, resize, meta)]
    wanted = ", ".join(f"{s.dtype} {list(s.shape)}" for s in info.inputs)
    raise RequestError(
        f"the array is {array.dtype} {list(array.shape)} but the model wants {wanted} "
        "or an HxWx3 uint8 image"
    )


def make_preprocess(resize: Resize, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> Preprocess:
    """The per-request preprocessing for a source whose images fit by `resize`; images
    whose decoding would take more than `max_decode_bytes` are refused from their header."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")

    def preprocess(request: Request, info: ModelInfo) -> list[NDArray[Any]]:
        if request.kind == "image":
            image = decode_image(request.payload, info, max_decode_bytes)
            return [image_to_input(image, info, resize, request.meta)]
        if request.kind == "tensor":
            if len(info.inputs) != 1:
                raise RequestError(
                    f"the model has {len(info.inputs)} inputs; tensor requests feed one-input "
                    "models only"
                )
            return [tensor_from_bytes(request.payload, info.inputs[0])]
        if request.kind == "array":
            return array_to_input(request.payload, info, resize, request.meta)
        raise RequestError(f"unknown request kind {request.kind!r}; use image, tensor or array")

    return preprocess


def _dtype(spec: TensorInfo) -> Any:
    try:
        return _DTYPES.get(spec.dtype) or np.dtype(spec.dtype).type
    except TypeError:
        raise RequestError(
            f"input {spec.name} has a type numpy does not know: {spec.dtype}"
        ) from None


def dequantize(values: NDArray[Any], spec: TensorInfo) -> NDArray[Any]:
    """Integer output values → real values by the tensor's scale and zero point."""
    if spec.scale and values.dtype.kind in "iu":
        return (values.astype(np.float32) - spec.zero_point) * np.float32(spec.scale)
    return values.astype(np.float32, copy=False)


def source_size(meta: dict[str, Any]) -> Sequence[int] | None:
    size = meta.get("image_size")
    return size if isinstance(size, (list, tuple)) and len(size) == 2 else None
