"""The JSON payloads edgetpud publishes, and the checks on requests it receives.

Pure functions, no MQTT client: `edgetpud.mqtt` calls them, and so can any other
transport or a test. Every JSON payload carries `"schema": "edgetpud.<kind>/1"`.
See docs/mqtt.md for the contract and an example of each payload.
"""

from __future__ import annotations

import io
import json
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edgetpud.messages import Result

RESULT_SCHEMA = "edgetpud.result/1"
ERROR_SCHEMA = "edgetpud.error/1"
EVENT_SCHEMA = "edgetpud.event/1"
HEALTH_SCHEMA = "edgetpud.health/1"

DEFAULT_MAX_PIXELS = 40_000_000  # the old fixed cap; decode_request no longer applies it by default
DEFAULT_MAX_DECODE_BYTES = 96 * 1024 * 1024  # daemon.max_decode_bytes: a 16 Mpx RGB photo
DECODE_OVERHEAD = 2  # bytes per pixel Pillow's decoders use on top of the image (measured)
_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")

IMAGE_TYPES = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/bmp": "BMP",
    "image/x-ms-bmp": "BMP",
}
TENSOR_TYPES = frozenset({"application/octet-stream"})
MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"))

# Reasons an MQTT request is refused, as they appear in `edgetpud.error/1` and in stats.
TOO_LARGE = "too_large"
UNKNOWN_MODEL = "unknown_model"
BAD_SIZE = "bad_size"
BAD_IMAGE = "bad_image"
IMAGE_TOO_LARGE = "image_too_large"
BAD_CONTENT_TYPE = "bad_content_type"
EMPTY = "empty"

# What a Pillow message may not show a user: an object repr (`<_io.BytesIO object at 0x…>`),
# a bytes repr (b'…'), an address.
_REPR = re.compile(r"<[^<>]*>|\bb'|\bb\"|0x[0-9a-f]{4,}", re.IGNORECASE)


def image_error_detail(exc: BaseException, default: str = "truncated or corrupt") -> str:
    """Why Pillow could not read an image, in words a user can read.

    Pillow's own text is kept when it is plain ("image file is truncated (6 bytes not
    processed)"); when it carries a repr or says only that the format is unknown
    ("cannot identify image file <_io.BytesIO object at 0x…>"), `default` says it instead.
    """
    text = " ".join(str(exc).split()).rstrip(".")
    if not text or _REPR.search(text) or text.lower().startswith("cannot identify image file"):
        return default
    return text


def tensor_hint(nbytes: int | None, desc: str = "") -> str:
    """How to send a raw input tensor instead, as docs/mqtt.md says; "" when the size is unknown."""
    if not nbytes:
        return ""
    what = f"{nbytes} bytes, {desc}" if desc else f"{nbytes} bytes"
    return f", or the raw input tensor ({what}) with content type application/octet-stream"


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays, tuples of them, bytes, paths: whatever a postprocessor returns."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


_encoder = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=True)


def to_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON; numpy values become plain numbers and lists."""
    return _encoder.encode(obj).encode()


def result_payload(result: Result, node: str) -> dict[str, Any]:
    """`edgetpud.result/1`: one inference, or the error that stopped it."""
    req = result.request
    payload: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "node": node,
        "model": req.model,
        "device": result.device,
        "request_id": req.id,
        "source": req.source,
        "received_at": req.received_at,
        "finished_at": result.finished_at,
    }
    if result.timing is not None:
        t = result.timing
        payload["timing"] = {
            "queue_ms": round(t.queue_ms, 3),
            "preprocess_ms": round(t.preprocess_ms, 3),
            "invoke_ms": round(t.invoke_ms, 3),
            "postprocess_ms": round(t.postprocess_ms, 3),
            "total_ms": round(t.total_ms, 3),
        }
    if req.meta:
        payload["meta"] = req.meta
    if result.error:
        payload["error"] = result.error
    else:
        payload["result"] = result.output
    return payload


_RETRY_IN = re.compile(r"retry in (\d+) ms")


def error_payload(
    model: str, reason: str, message: str, *, node: str, request_id: str = ""
) -> dict[str, Any]:
    """`edgetpud.error/1`: a request that was refused before it reached a worker. A
    refusal whose message says "retry in N ms" (busy) carries `retry_after_ms`: N."""
    payload: dict[str, Any] = {
        "schema": ERROR_SCHEMA,
        "node": node,
        "model": model,
        "request_id": request_id,
        "reason": reason,
        "message": message,
        "time": time.time(),
    }
    retry = _RETRY_IN.search(message)
    if retry:
        payload["retry_after_ms"] = int(retry.group(1))
    return payload


def event_payload(event: Mapping[str, Any], node: str) -> dict[str, Any]:
    """`edgetpud.event/1`: the event with schema, node and time added where absent."""
    payload = dict(event)
    payload.setdefault("schema", EVENT_SCHEMA)
    payload.setdefault("node", node)
    payload.setdefault("time", time.time())
    return payload


def split_reason(text: str) -> tuple[str, str]:
    """A service answer like "busy: queue full" -> ("busy", "busy: queue full")."""
    head = text.split(":", 1)[0].strip()
    code = "_".join(head.lower().split()) if head and len(head) <= 32 else "refused"
    return code, text


class BadRequest(Exception):
    """A request refused before queueing: `reason` is a stable code, str() says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Decoded:
    """A request payload that passed the checks: an encoded image or a raw input tensor."""

    kind: Literal["image", "tensor"]
    payload: bytes
    format: str = ""  # JPEG, PNG, BMP for images
    width: int = 0
    height: int = 0


def decode_request(
    model: str,
    payload: bytes,
    *,
    input_nbytes: int | None,
    input_desc: str = "",
    content_type: str | None = None,
    max_bytes: int = 8 * 1024 * 1024,
    max_pixels: int | None = None,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> Decoded:
    """Check one request payload for `model`; raise BadRequest with a reason if it cannot run.

    The kind comes from the MQTT 5 content type when given, else from magic bytes:
    JPEG, PNG and BMP are images (only the header is read here, with Pillow's lazy
    open, to refuse an image whose decoding would take more than `max_decode_bytes`,
    see `decode_cost`, or with more than `max_pixels` pixels when given); anything else
    must be exactly the model's input tensor size (`input_nbytes`). A payload declared
    application/octet-stream that is not that size but starts like an image is taken
    as the image it is. The worker decodes and resizes images.
    """
    limits = _Limits(max_pixels, max_decode_bytes)
    size = len(payload)
    if size == 0:
        raise BadRequest(
            EMPTY, f"the request for model {model} is empty; send an image or a tensor"
        )
    if size > max_bytes:
        raise BadRequest(
            TOO_LARGE,
            f"the request is {size} bytes, over mqtt.max_request_bytes ({max_bytes}); "
            "send a smaller image or raise the limit",
        )
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype:
        if ctype in IMAGE_TYPES:
            fmt = IMAGE_TYPES[ctype]
            return _check_image(
                payload, fmt, limits, ctype=ctype, nbytes=input_nbytes, desc=input_desc
            )
        if ctype in TENSOR_TYPES:
            sniffed = _sniff(payload)
            if sniffed and size != input_nbytes:  # a JPEG sent as "just bytes" is still a JPEG
                return _check_image(
                    payload, sniffed, limits, ctype="", nbytes=input_nbytes, desc=input_desc
                )
            return _check_tensor(model, payload, input_nbytes, input_desc)
        raise BadRequest(
            BAD_CONTENT_TYPE,
            f"content type {_cut(ctype)!r} is not supported; use image/jpeg, image/png, image/bmp "
            "or application/octet-stream (a raw input tensor)",
        )
    for magic, fmt in MAGIC:
        if payload.startswith(magic):
            try:
                return _check_image(
                    payload, fmt, limits, ctype="", nbytes=input_nbytes, desc=input_desc
                )
            except BadRequest:
                if input_nbytes is not None and size == input_nbytes:
                    break  # a raw tensor that happens to start like an image
                raise
    return _check_tensor(model, payload, input_nbytes, input_desc)


def _check_tensor(model: str, payload: bytes, nbytes: int | None, desc: str) -> Decoded:
    if nbytes is None:
        raise BadRequest(
            BAD_SIZE,
            f"model {model}'s input size is not known, so a raw tensor cannot be checked; "
            "send a JPEG, PNG or BMP image",
        )
    if len(payload) != nbytes:
        what = f" ({desc})" if desc else ""
        raise BadRequest(
            BAD_SIZE,
            f"not an image (JPEG, PNG, BMP) and {len(payload)} bytes is not model {model}'s "
            f"input size: a raw tensor must be exactly {nbytes} bytes{what}",
        )
    return Decoded("tensor", payload)


def _cut(text: str, limit: int = 64) -> str:
    """`text`, or its start and its length when longer than `limit` (for messages)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _sniff(payload: bytes) -> str:
    """The image format `payload` starts like (JPEG, PNG, BMP), or ""."""
    for magic, fmt in MAGIC:
        if payload.startswith(magic):
            return fmt
    return ""


@dataclass(frozen=True)
class _Limits:
    max_pixels: int | None
    max_decode_bytes: int


def bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel of a decoded Pillow image in `mode` (Pillow keeps RGB in 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def decode_cost(mode: str, width: int, height: int) -> int:
    """Peak bytes decoding a width x height image of Pillow `mode` into RGB takes: the
    decoded image, its RGB copy unless it is RGB already, and the decoder's own working
    memory (measured on 4000x4000 images: RGB JPEG 5.7, L PNG 6.7, I;16 PNG 7.7, RGBA
    PNG 9.7 bytes per pixel of peak RSS; this gives 6, 7, 8 and 10)."""
    per_pixel = bytes_per_pixel(mode) + (0 if mode == "RGB" else 4) + DECODE_OVERHEAD
    return width * height * per_pixel


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def budget_problem(mode: str, width: int, height: int, max_decode_bytes: int) -> str | None:
    """Why an image of this header cannot be decoded within `max_decode_bytes`, or None."""
    cost = decode_cost(mode, width, height)
    if cost <= max_decode_bytes:
        return None
    rgb_pixels = max_decode_bytes // decode_cost("RGB", 1, 1)
    return (
        f"the image is {width}x{height} {mode} ({width * height:,} pixels); decoding it "
        f"takes about {_mib(cost)}, over daemon.max_decode_bytes ({_mib(max_decode_bytes)}, "
        f"about {rgb_pixels / 1e6:.1f} megapixels of RGB); scale it down before sending"
    )


def bomb_problem(exc: BaseException, max_decode_bytes: int) -> str:
    """Pillow refused to even open the image (over twice its own pixel limit): say so with
    edgetpud's own limit, not Pillow's."""
    found = _BOMB_PIXELS.search(str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "hundreds of millions of pixels"
    rgb_pixels = max_decode_bytes // decode_cost("RGB", 1, 1)
    return (
        f"the image has {pixels}; decoding it would take far more than "
        f"daemon.max_decode_bytes ({_mib(max_decode_bytes)}, about {rgb_pixels / 1e6:.1f} "
        "megapixels of RGB); scale it down before sending"
    )


def _check_image(
    payload: bytes, fmt: str, limits: _Limits, *, ctype: str, nbytes: int | None, desc: str
) -> Decoded:
    """Read the image's header (format, size, mode). `ctype` is the content type that
    declared it, "" when its first bytes did; `nbytes` and `desc` the model's input tensor,
    for the hint."""
    from PIL import Image  # Pillow is loaded only once an image arrives

    try:
        with warnings.catch_warnings():
            # Pillow warns (and past 2x its limit, raises) while reading the header of a
            # huge image; our own budget check below gives the reasoned refusal.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(payload), formats=[fmt]) as im:
                width, height = im.size
                mode = im.mode
    except Image.DecompressionBombError as exc:
        raise BadRequest(IMAGE_TOO_LARGE, bomb_problem(exc, limits.max_decode_bytes)) from None
    except Exception as exc:  # Pillow raises many kinds for bad headers
        said = (
            f"the payload has content type {ctype} but is not a readable {fmt} image"
            if ctype
            else f"the payload looks like {fmt} but is not a readable image"
        )
        raise BadRequest(
            BAD_IMAGE,
            f"{said} ({image_error_detail(exc)}); "
            f"send a complete JPEG, PNG or BMP file{tensor_hint(nbytes, desc)}",
        ) from None
    if width == 0 or height == 0:
        raise BadRequest(
            BAD_IMAGE,
            f"the {fmt} image has no pixels ({width}x{height}); send an image of at least 1x1",
        )
    if limits.max_pixels is not None and width * height > limits.max_pixels:
        raise BadRequest(
            IMAGE_TOO_LARGE,
            f"the image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_pixels}; scale it down before sending",
        )
    problem = budget_problem(mode, width, height, limits.max_decode_bytes)
    if problem:
        raise BadRequest(IMAGE_TOO_LARGE, problem)
    return Decoded("image", payload, fmt, width, height)
