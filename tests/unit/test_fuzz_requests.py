"""Property-based fuzzing of the MQTT request decoder: 10,000 payloads, none escapes.

Whatever bytes, content type and limits arrive, `decode_request` either accepts the
payload as an image or a tensor that fits the model, or raises `BadRequest` with a
stable reason code and a message that says what to send instead. Nothing else.
"""

from __future__ import annotations

import io
import struct
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgetpud import payloads
from tests.support.examples import examples

REASONS = {
    payloads.TOO_LARGE,
    payloads.BAD_SIZE,
    payloads.BAD_IMAGE,
    payloads.IMAGE_TOO_LARGE,
    payloads.BAD_CONTENT_TYPE,
    payloads.EMPTY,
}
MAGICS = [m for m, _ in payloads.MAGIC]


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


SMALL_PNG = _png(3, 2)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A PNG claiming any size, with a few bytes of image data: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


payload_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda m, rest: m + rest, st.sampled_from(MAGICS), st.binary(max_size=200)),
    st.builds(
        lambda cut, junk: SMALL_PNG[:cut] + junk,
        st.integers(0, len(SMALL_PNG)),
        st.binary(max_size=40),
    ),
    st.builds(png_header, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.text(max_size=80).map(str.encode),  # e.g. a path a client hopes the daemon will open
)
content_types = st.one_of(
    st.none(),
    st.sampled_from([*payloads.IMAGE_TYPES, *payloads.TENSOR_TYPES, "", "text/plain"]),
    st.text(max_size=30),
)


@settings(
    max_examples=examples(10_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    payload=payload_bytes,
    content_type=content_types,
    input_nbytes=st.one_of(st.none(), st.integers(1, 400)),
    max_bytes=st.integers(64, 1024),
    max_pixels=st.integers(1, 50_000_000),
)
def test_every_payload_is_accepted_or_refused_with_a_reason(
    payload: bytes,
    content_type: str | None,
    input_nbytes: int | None,
    max_bytes: int,
    max_pixels: int,
) -> None:
    try:
        got = payloads.decode_request(
            "m",
            payload,
            input_nbytes=input_nbytes,
            input_desc="1x4x4x3 uint8",
            content_type=content_type,
            max_bytes=max_bytes,
            max_pixels=max_pixels,
        )
    except payloads.BadRequest as exc:
        assert exc.reason in REASONS, exc.reason
        message = str(exc)
        assert len(message) > 20 and "m" in message, message
        return
    assert got.payload == payload and len(payload) <= max_bytes
    if got.kind == "tensor":
        assert len(payload) == input_nbytes
    else:
        assert got.format in {"JPEG", "PNG", "BMP"}
        assert 0 < got.width * got.height <= max_pixels


def test_a_decompression_bomb_header_is_refused_without_decoding() -> None:
    bomb = png_header(100_000, 100_000)  # 10^10 pixels claimed in 33 bytes
    try:
        payloads.decode_request("m", bomb, input_nbytes=None)
    except payloads.BadRequest as exc:
        assert exc.reason == payloads.IMAGE_TOO_LARGE
        # edgetpud's own limit, not Pillow's 178,956,970 pixels
        assert "10,000,000,000 pixels" in str(exc) and "daemon.max_decode_bytes (96 MiB" in str(exc)
        assert "178956970" not in str(exc)
    else:
        raise AssertionError("a 100000x100000 PNG header was accepted")


def test_a_path_is_just_bytes_never_a_file_to_open() -> None:
    for path in (b"/etc/shadow", b"../../../../etc/passwd", b"file:///etc/edgetpud/x.tflite"):
        try:
            payloads.decode_request("m", path, input_nbytes=150528, input_desc="1x224x224x3 uint8")
        except payloads.BadRequest as exc:
            assert exc.reason == payloads.BAD_SIZE
            assert f"{len(path)} bytes is not model m's input size" in str(exc)
        else:
            raise AssertionError(f"{path!r} was accepted")
