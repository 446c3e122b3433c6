"""The JSON payloads and the request checks, without a broker."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from edgetpud import payloads
from edgetpud.messages import ReplyTo, Request, Result, Timing

NBYTES = 4 * 4 * 3


def image(fmt: str, size: tuple[int, int] = (4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, fmt)
    return buf.getvalue()


def decode(payload: bytes, **kw: object) -> payloads.Decoded:
    args: dict[str, object] = {"input_nbytes": NBYTES, "input_desc": "1x4x4x3 uint8"}
    args.update(kw)
    return payloads.decode_request("m", payload, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP"])
def test_images_are_recognised_by_magic_bytes(fmt: str) -> None:
    got = decode(image(fmt, (6, 5)))
    assert (got.kind, got.format, got.width, got.height) == ("image", fmt, 6, 5)


def test_a_tensor_of_the_input_size_is_a_tensor() -> None:
    assert decode(b"\x07" * NBYTES).kind == "tensor"
    # a tensor that happens to start like a BMP is still a tensor
    assert decode(b"BM" + b"\x00" * (NBYTES - 2)).kind == "tensor"


def test_content_type_decides_the_kind() -> None:
    assert decode(image("PNG"), content_type="image/png").kind == "image"
    with pytest.raises(payloads.BadRequest) as exc:
        decode(image("PNG"), content_type="text/plain")
    assert exc.value.reason == payloads.BAD_CONTENT_TYPE


@pytest.mark.parametrize(
    ("payload", "kw", "reason"),
    [
        (b"", {}, payloads.EMPTY),
        (b"\x00" * 10, {}, payloads.BAD_SIZE),
        (b"\x00" * 200, {"max_bytes": 100}, payloads.TOO_LARGE),
        (b"\x89PNG\r\n\x1a\n" + b"junk", {}, payloads.BAD_IMAGE),
        (b"\xff\xd8\xff" + b"\x00" * 20, {}, payloads.BAD_IMAGE),
        (image("PNG", (50, 50)), {"max_pixels": 2000}, payloads.IMAGE_TOO_LARGE),
        (b"\x00" * NBYTES, {"input_nbytes": None}, payloads.BAD_SIZE),
    ],
)
def test_bad_requests_say_why(payload: bytes, kw: dict[str, object], reason: str) -> None:
    with pytest.raises(payloads.BadRequest) as exc:
        decode(payload, **kw)
    assert exc.value.reason == reason
    assert str(exc.value)


def test_wrong_size_message_names_the_expected_size() -> None:
    with pytest.raises(payloads.BadRequest) as exc:
        decode(b"\x00" * 10)
    assert "48 bytes" in str(exc.value)
    assert "1x4x4x3 uint8" in str(exc.value)


# What a user must never read in a refusal: Pillow's object reprs, Python class names.
NOT_FOR_USERS = ("object at 0x", "<_io.", "Error:", "b'", "kind 'tensor'")


def refusal(payload: bytes, **kw: object) -> payloads.BadRequest:
    with pytest.raises(payloads.BadRequest) as exc:
        decode(payload, **kw)
    for leak in NOT_FOR_USERS:
        assert leak not in str(exc.value), f"{leak!r} in {str(exc.value)!r}"
    return exc.value


def test_an_unreadable_image_says_what_to_send_instead() -> None:
    got = refusal(b"\xff\xd8\xff" + b"\x00" * 20)
    assert got.reason == payloads.BAD_IMAGE
    assert str(got) == (
        "the payload looks like JPEG but is not a readable image (truncated or corrupt); "
        "send a complete JPEG, PNG or BMP file, or the raw input tensor (48 bytes, "
        "1x4x4x3 uint8) with content type application/octet-stream"
    )


def test_an_unreadable_image_of_a_declared_type_names_the_type() -> None:
    got = refusal(image("PNG")[:20], content_type="image/png")
    assert got.reason == payloads.BAD_IMAGE
    assert str(got).startswith(
        "the payload has content type image/png but is not a readable PNG image ("
    )
    assert "with content type application/octet-stream" in str(got)


def test_without_a_known_input_size_only_images_are_suggested() -> None:
    got = refusal(image("BMP")[:10], input_nbytes=None)
    assert str(got).endswith("; send a complete JPEG, PNG or BMP file")


@pytest.mark.parametrize(
    ("exc", "detail"),
    [
        (OSError("cannot identify image file <_io.BytesIO object at 0x7f5a9dbb49a0>"), None),
        (SyntaxError("broken PNG file (chunk b'IHDR')"), None),
        (OSError(""), None),
        (
            OSError("image file is truncated (6 bytes not processed)"),
            "image file is truncated (6 bytes not processed)",
        ),
        (OSError("Truncated File Read"), "Truncated File Read"),
    ],
)
def test_pillow_text_is_kept_only_when_it_is_plain(exc: Exception, detail: str | None) -> None:
    assert payloads.image_error_detail(exc) == (detail or "truncated or corrupt")


def test_too_large_image_says_what_to_do() -> None:
    got = refusal(image("PNG", (50, 50)), max_pixels=2000)
    assert got.reason == payloads.IMAGE_TOO_LARGE
    assert str(got).endswith("scale it down before sending")


def test_result_payload_carries_identity_timing_and_output() -> None:
    req = Request("birds", b"", "image", id="r1", source="mqtt", reply_to=ReplyTo("x", b"1"))
    res = Result(req, "usb:2-1", {"classes": [{"id": 3, "score": 0.5}]}, timing=Timing(1, 2, 3, 4))
    body = json.loads(payloads.to_json(payloads.result_payload(res, "box")))
    assert body["schema"] == "edgetpud.result/1"
    assert (body["model"], body["device"], body["request_id"], body["node"]) == (
        "birds",
        "usb:2-1",
        "r1",
        "box",
    )
    assert body["timing"]["total_ms"] == 10
    assert body["result"] == {"classes": [{"id": 3, "score": 0.5}]}
    assert "error" not in body


def test_failed_result_has_error_not_result() -> None:
    res = Result(Request("m", b""), "cpu", error="invoke failed: see log")
    body = payloads.result_payload(res, "box")
    assert body["error"] == "invoke failed: see log"
    assert "result" not in body


def test_numpy_like_values_become_json() -> None:
    class Arr:
        def tolist(self) -> list[int]:
            return [1, 2]

    assert json.loads(payloads.to_json({"a": Arr(), "b": b"\x01"})) == {"a": [1, 2], "b": "01"}


def test_event_and_error_payloads() -> None:
    event = payloads.event_payload({"event": "reload_ok"}, "box")
    assert (event["schema"], event["node"], event["event"]) == (
        "edgetpud.event/1",
        "box",
        "reload_ok",
    )
    err = payloads.error_payload("m", "busy", "busy: queue full", node="box", request_id="7")
    assert err["schema"] == "edgetpud.error/1"
    assert (err["reason"], err["request_id"]) == ("busy", "7")


def test_split_reason() -> None:
    assert payloads.split_reason("busy: queue full") == ("busy", "busy: queue full")
    assert payloads.split_reason("unknown model: cats")[0] == "unknown_model"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP"])
def test_an_image_sent_as_octet_stream_is_sniffed_as_the_image_it_is(fmt: str) -> None:
    """Clients that label every payload "just bytes" (application/octet-stream) still get
    their JPEG read, not "not an image"; a payload of exactly the input size stays a tensor."""
    got = decode(image(fmt), content_type="application/octet-stream")
    assert (got.kind, got.format) == ("image", fmt)
    assert (
        decode(b"\xff\xd8\xff" + b"\0" * (NBYTES - 3), content_type="application/octet-stream").kind
        == "tensor"
    )


def png_claiming(width: int, height: int, color_type: int = 6) -> bytes:
    """A PNG header claiming width x height (RGBA by default) over a few bytes of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_the_default_decode_budget_refuses_a_36_mpx_rgba_png_under_the_old_40_mpx_cap() -> None:
    """A 308 KB PNG under 40 Mpx cost 1.6 s of CPU and ~415 MB on a worker: the default
    budget (96 MiB) refuses it from its header and quotes edgetpud's own limit."""
    with pytest.raises(payloads.BadRequest) as exc:
        decode(png_claiming(6000, 6000))
    assert exc.value.reason == payloads.IMAGE_TOO_LARGE
    text = str(exc.value)
    assert "6000x6000 RGBA (36,000,000 pixels)" in text
    assert "about 343 MiB, over daemon.max_decode_bytes (96 MiB" in text
    # a 16 Mpx RGB photo, what the default is sized for, passes
    assert decode(png_claiming(4000, 4000, color_type=2)).kind == "image"


def test_the_budget_counts_bytes_per_pixel_of_the_mode() -> None:
    budget = payloads.decode_cost("RGB", 1000, 1000)  # 6 MB: 1 Mpx of RGB
    assert payloads.decode_cost("RGBA", 1000, 1000) > budget > payloads.decode_cost("L", 800, 800)
    rgb, rgba = png_claiming(1000, 1000, color_type=2), png_claiming(1000, 1000, color_type=6)
    assert decode(rgb, max_decode_bytes=budget).kind == "image"
    with pytest.raises(payloads.BadRequest) as exc:
        decode(rgba, max_decode_bytes=budget)
    assert "over daemon.max_decode_bytes (6 MiB, about 1.0 megapixels of RGB)" in str(exc.value)
