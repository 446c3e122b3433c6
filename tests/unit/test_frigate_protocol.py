"""Frigate's wire protocol as data (edgetpud/frigate/protocol.py): how a header's frames fit
the model, checked per frame even though the fit is worked out once per header."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgetpud.frigate import protocol
from edgetpud.frigate.protocol import Mismatch
from edgetpud.modelfile import TensorSpec

SPEC = TensorSpec("image", (1, 48, 64, 3), "uint8")


def header(shape: list[int], dtype: str = "uint8") -> bytes:
    return json.dumps({"shape": shape, "dtype": dtype, "model_type": "ssd"}).encode()


def plan(shape: list[int], dtype: str = "uint8", *, resize: bool = False) -> protocol.FramePlan:
    got_shape, got_dtype = protocol.read_header(header(shape, dtype))
    return protocol.plan_frame(got_shape, got_dtype, SPEC, "doorcam", resize=resize)


def test_a_frame_of_the_model_input_is_taken_as_it_is() -> None:
    data = bytearray(range(256)) * (48 * 64 * 3 // 256)
    array, width, height = plan([1, 48, 64, 3]).apply(memoryview(data))
    assert array.shape == (1, 48, 64, 3) and array.dtype == np.uint8
    assert (width, height) == (64, 48)
    assert np.shares_memory(array, np.frombuffer(data, np.uint8))  # no copy


def test_the_size_is_checked_on_every_frame_of_a_known_header() -> None:
    fits = plan([1, 48, 64, 3])
    fits.apply(memoryview(bytes(48 * 64 * 3)))
    with pytest.raises(Mismatch, match=r"uint8 \[1, 48, 64, 3\] \(9216 bytes\) but 9215 came"):
        fits.apply(memoryview(bytes(48 * 64 * 3 - 1)))


def test_another_size_says_what_to_set_in_frigate_or_is_resized_when_asked() -> None:
    other = plan([1, 320, 320, 3])
    with pytest.raises(Mismatch) as refused:
        other.apply(memoryview(bytes(320 * 320 * 3)))
    assert "[1, 320, 320, 3]" in str(refused.value) and "64x48" in str(refused.value)
    assert 'on_mismatch = "resize"' in str(refused.value)
    array, width, height = plan([1, 320, 320, 3], resize=True).apply(
        memoryview(bytes(320 * 320 * 3))
    )
    assert array.shape == (320, 320, 3) and (width, height) == (320, 320)


def test_a_float_frame_is_never_resized_and_a_model_without_one_image_input_takes_none() -> None:
    with pytest.raises(Mismatch, match="takes uint8"):
        plan([1, 48, 64, 3], "float32", resize=True).apply(memoryview(bytes(48 * 64 * 3 * 4)))
    none = protocol.plan_frame([1, 48, 64, 3], np.dtype(np.uint8), None, "doorcam", resize=True)
    with pytest.raises(Mismatch, match="does not have one image input"):
        none.apply(memoryview(b""))  # said before the size, which is then beside the point


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"dtype": "uint8"}', b'{"shape": [1, 0, 3], "dtype": "uint8"}',
     b'{"shape": [1, 2, 3], "dtype": "str"}', b'{"shape": "x", "dtype": "uint8"}'],
)  # fmt: skip
def test_unreadable_headers_raise(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        protocol.read_header(raw)


def test_the_model_handshake_is_answered_loaded_and_uploads_refused() -> None:
    asked = protocol.read_control(b'{"model_request": true, "model_name": "ssd.tflite"}')
    assert (asked.kind, asked.model_name) == ("model_request", "ssd.tflite")
    assert json.loads(asked.reply) == {"model_available": True, "model_loaded": True}
    upload = protocol.read_control(b'{"model_data": true, "model_name": "x.tflite"}')
    assert json.loads(upload.reply) == {"model_saved": False, "model_loaded": False}
    assert protocol.read_control(b'{"other": 1}').keys == ("other",)
    assert protocol.read_control(b"\xff").kind == "invalid"
