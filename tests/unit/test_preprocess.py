"""Preprocessing: decode, RGB, resize modes, quantization, tensor and array requests."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from edgetpud.errors import RequestError
from edgetpud.messages import Request
from edgetpud.preprocess import Transform, decode_image, make_preprocess


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0


@dataclass(frozen=True)
class Info:
    inputs: tuple[Spec, ...]
    outputs: tuple[Spec, ...] = ()


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def info(w: int = 8, h: int = 8, dtype: str = "uint8") -> Info:
    return Info((Spec("input", (1, h, w, 3), dtype, 1 / 128, 128 if dtype == "uint8" else 0),))


def request(payload: object, kind: str = "image") -> Request:
    return Request("m", payload, kind)  # type: ignore[arg-type]


def test_stretch_fills_the_input_and_records_the_source_size() -> None:
    req = request(encode(Image.new("RGB", (40, 20), (10, 200, 30))))
    [tensor] = make_preprocess("stretch")(req, info())
    assert tensor.shape == (1, 8, 8, 3)
    assert tensor.dtype == np.uint8
    assert tuple(tensor[0, 4, 4]) == (10, 200, 30)
    assert req.meta["image_size"] == [40, 20]


def test_letterbox_keeps_aspect_pads_black_and_maps_back() -> None:
    req = request(encode(Image.new("RGB", (40, 20), (255, 255, 255))))
    [tensor] = make_preprocess("letterbox")(req, info())
    rows = tensor[0, :, 4, 0]
    assert list(rows) == [0, 0, 255, 255, 255, 255, 0, 0]
    transform = Transform.from_meta(req.meta["transform"])
    assert transform is not None
    assert transform.to_source(0, 2) == pytest.approx((0, 0))
    assert transform.to_source(8, 6) == pytest.approx((40, 20))


def test_center_crop_keeps_the_middle() -> None:
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 0, 255), (10, 0, 20, 10))  # blue middle third
    req = request(encode(image))
    [tensor] = make_preprocess("center-crop")(req, info())
    assert (tensor[0, :, :, 2] > 200).all()
    assert (tensor[0, :, :, 0] < 50).all()


def test_grey_and_rgba_images_become_rgb() -> None:
    for mode, colour in (("L", 77), ("RGBA", (77, 77, 77, 0)), ("P", 3)):
        req = request(encode(Image.new(mode, (8, 8), colour)))
        [tensor] = make_preprocess("stretch")(req, info())
        assert tensor.shape == (1, 8, 8, 3)


@pytest.mark.parametrize(("dtype", "expected"), [("uint8", 255), ("int8", 127), ("float32", 1.0)])
def test_quantization_follows_the_input_dtype(dtype: str, expected: float) -> None:
    req = request(encode(Image.new("RGB", (8, 8), (255, 255, 255)), "BMP"))
    [tensor] = make_preprocess("stretch")(req, info(dtype=dtype))
    assert tensor.dtype == np.dtype(dtype)
    assert float(tensor.max()) == pytest.approx(expected)
    black = request(encode(Image.new("RGB", (8, 8)), "JPEG"))
    [low] = make_preprocess("stretch")(black, info(dtype=dtype))
    assert float(low.min()) == pytest.approx({"uint8": 0, "int8": -128, "float32": -1.0}[dtype])


def test_garbage_is_a_request_error_that_says_what_to_send() -> None:
    with pytest.raises(RequestError, match=r"not a readable image.*JPEG, PNG or BMP"):
        make_preprocess("stretch")(request(b"not an image"), info())
    with pytest.raises(RequestError, match="empty"):
        make_preprocess("stretch")(request(b""), info())


# What a user must never read: Pillow's object reprs, Python class names, internal kinds.
NOT_FOR_USERS = ("object at 0x", "<_io.", "Error:", "Error)", "kind 'tensor'")


def assert_plain(message: str) -> None:
    for leak in NOT_FOR_USERS:
        assert leak not in message, f"{leak!r} in {message!r}"


def test_an_unreadable_request_says_how_to_send_an_image_or_the_tensor() -> None:
    with pytest.raises(RequestError) as exc:
        make_preprocess("stretch")(request(b"not an image"), info())
    assert str(exc.value) == (
        "the request is not a readable image (an unknown format, or truncated or corrupt); "
        "send a complete JPEG, PNG or BMP file, or the raw input tensor (192 bytes, "
        "1x8x8x3 uint8) with content type application/octet-stream"
    )


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP"])
def test_a_truncated_image_is_reported_in_words(fmt: str) -> None:
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), fmt)
    for cut in (10, 40, len(data) // 2):
        with pytest.raises(RequestError, match=r"^the request is not a readable image \(") as exc:
            make_preprocess("stretch")(request(data[:cut]), info())
        assert_plain(str(exc.value))
        assert "with content type application/octet-stream" in str(exc.value)


def test_without_a_model_only_an_image_file_is_asked_for() -> None:
    """`edgetpud infer` decodes files with no request behind them: no tensor, no content type."""
    with pytest.raises(RequestError) as exc:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"junk")
    assert str(exc.value) == (
        "not a readable image (an unknown format, or truncated or corrupt); "
        "use a complete JPEG, PNG or BMP file"
    )
    with pytest.raises(RequestError, match=r"^the file is empty; use a JPEG, PNG or BMP image$"):
        decode_image(b"")


def test_a_model_with_two_inputs_gets_no_tensor_hint() -> None:
    two = Info((Spec("a", (1, 8, 8, 3), "uint8"), Spec("b", (1, 4), "uint8")))
    with pytest.raises(RequestError) as exc:
        decode_image(b"garbage", two)
    assert str(exc.value).endswith("; send a complete JPEG, PNG or BMP file")


def test_tensor_bytes_must_match_the_input_size() -> None:
    data = bytes(range(192))
    [tensor] = make_preprocess("stretch")(request(data, "tensor"), info())
    assert tensor.shape == (1, 8, 8, 3)
    assert tensor.reshape(-1)[5] == 5
    with pytest.raises(RequestError, match="has 10 bytes but input input needs 192"):
        make_preprocess("stretch")(request(b"x" * 10, "tensor"), info())


def test_arrays_pass_through_or_are_treated_as_images() -> None:
    exact = np.full((8, 8, 3), 9, np.uint8)
    [tensor] = make_preprocess("stretch")(request(exact, "array"), info())
    assert tensor.shape == (1, 8, 8, 3)
    big = np.full((30, 50, 3), 200, np.uint8)
    req = request(big, "array")
    [tensor] = make_preprocess("letterbox")(req, info())
    assert req.meta["image_size"] == [50, 30]
    assert tensor.max() == 200
    with pytest.raises(RequestError, match="model wants"):
        make_preprocess("stretch")(request(np.zeros((3, 3), np.float64), "array"), info())


def test_images_need_an_image_shaped_input() -> None:
    flat = Info((Spec("x", (1, 16), "uint8"),))
    with pytest.raises(RequestError, match="send raw tensors instead"):
        make_preprocess("stretch")(request(encode(Image.new("RGB", (4, 4)))), flat)


def test_an_image_over_the_decode_budget_is_refused_from_its_header() -> None:
    """Refused before decoding: the header claims 20000x20000 over 64 bytes of data, so a
    decode would fail as truncated; the budget speaks first and quotes its own limit."""
    from tests.unit.test_payloads import png_claiming

    with pytest.raises(RequestError) as exc:
        decode_image(png_claiming(12000, 12000))
    text = str(exc.value)
    assert "12000x12000 RGBA (144,000,000 pixels)" in text and "daemon.max_decode_bytes" in text
    assert "89 megapixels" not in text
    # past twice Pillow's own limit Pillow refuses to open it; the message is still ours
    with pytest.raises(RequestError) as bomb:
        decode_image(png_claiming(20000, 20000))
    text = str(bomb.value)
    assert "400,000,000 pixels" in text and "daemon.max_decode_bytes (96 MiB" in text
    assert "178956970" not in text and "89 megapixels" not in text
    with pytest.raises(RequestError) as small:
        decode_image(png_claiming(3000, 3000), max_decode_bytes=8 * 1024 * 1024)
    assert "over daemon.max_decode_bytes (8 MiB" in str(small.value)
