"""Hostile requests over MQTT: each gets an error reply with a reason, and the daemon serves on.

A payload over `mqtt.max_request_bytes`, a PNG header claiming 100000x100000 pixels
(refused from its header, before any decoding), and request payloads that name files
(requests cannot name files: a path is just bytes of the wrong size for a tensor).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_service import BASE, config_text, small_png, usb_root
from tests.support.daemon import Daemon
from tests.support.faults import fault_rig, rss_kb
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

ONE_MODEL = """
[models.alpha]
model = "{m}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
labels = "{m}/imagenet_labels.txt"
queue_size = 100
[models.alpha.postprocess]
type = "classify"
top_k = 1
"""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 65536, 9)  # a small start of a huge, highly compressible image
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)


@pytest.mark.timeout(120)
def test_oversized_bombs_and_paths_are_refused_with_reasons(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    with fault_rig(tmp_path, models_dir, fake_lib) as rig:
        rig.tb.add_accelerator(usb_root(rig.tb), 1)
        text = config_text(tmp_path, rig.broker.port, models_dir, fake_lib, models=ONE_MODEL)
        text = text.replace("[runtime]", "max_request_bytes = 65536\n[runtime]")
        d = Daemon(tmp_path / "daemon", text, env=rig.control.env())
        rig.daemons.append(d)
        d.start().wait_ready()
        assert d.proc is not None
        wait_for(lambda: rig.placement("alpha"), 30, "alpha placed")
        rss_before = rss_kb(d.proc.pid)
        hostile = {
            "big": b"\x00" * 70_000,
            "bomb": png_bomb(),
            "path": str(models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite").encode(),
            "etc": b"/etc/shadow",
            "url": b"file:///etc/edgetpud/edgetpud.toml",
        }
        for rid, payload in hostile.items():
            rig.sub.publish(f"{BASE}/models/alpha/infer", payload, CorrelationData=rid.encode())
        rig.send("alpha", ["fine"])

        def replies() -> dict[str, dict[str, Any]]:
            out = [json.loads(m.payload) for m in rig.sub.on(f"{BASE}/models/alpha/results")]
            return {r["request_id"]: r for r in out}

        got = wait_for(lambda: set(hostile) | {"fine"} <= set(replies()), 60, "every reply")
        got = replies()
        assert got["big"]["reason"] == "too_large"
        assert "max_request_bytes (65536)" in got["big"]["message"]
        assert got["bomb"]["reason"] == "image_too_large"
        for rid in ("path", "etc", "url"):
            assert got[rid]["schema"] == "edgetpud.error/1"
            assert got[rid]["reason"] == "bad_size", got[rid]
            assert "raw tensor must be exactly" in got[rid]["message"]
        assert "error" not in got["fine"] and got["fine"]["result"][0]["label"]
        # the bomb was refused from its header: the daemon did not grow by a decoded image
        assert rss_kb(d.proc.pid) - rss_before < 200_000
        assert d.proc.poll() is None
        rig.send("alpha", ["after"])
        wait_for(lambda: "after" in rig.answered("alpha"), 30, "still serving")
        assert small_png(1)  # the helper the rig sends with is a real PNG
        assert d.stop() == 0


@pytest.mark.timeout(120)
def test_the_configured_decode_budget_refuses_from_the_header_and_octet_stream_jpegs_run(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    """daemon.max_decode_bytes is the limit the daemon applies and quotes (not Pillow's
    178,956,970 pixels, not a fixed 40 Mpx); a JPEG labelled application/octet-stream is
    inferred as the image it is."""
    import io

    from PIL import Image

    def encoded(size: tuple[int, int], fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, (90, 120, 30)).save(buf, fmt)
        return buf.getvalue()

    with fault_rig(tmp_path, models_dir, fake_lib) as rig:
        rig.tb.add_accelerator(usb_root(rig.tb), 1)
        text = config_text(tmp_path, rig.broker.port, models_dir, fake_lib, models=ONE_MODEL)
        text = text.replace("[mqtt]", "max_decode_bytes = 1048576\n[mqtt]", 1)
        d = Daemon(tmp_path / "daemon", text, env=rig.control.env())
        rig.daemons.append(d)
        d.start().wait_ready()
        wait_for(lambda: rig.placement("alpha"), 30, "alpha placed")
        topic = f"{BASE}/models/alpha/infer"
        rig.sub.publish(topic, encoded((600, 600), "PNG"), CorrelationData=b"big")
        rig.sub.publish(topic, encoded((300, 300), "PNG"), CorrelationData=b"small")
        rig.sub.publish(
            topic,
            encoded((300, 300), "JPEG"),
            CorrelationData=b"octet",
            ContentType="application/octet-stream",
        )
        got = wait_for(
            lambda: (
                {"big", "small", "octet"} <= set(rig.answered("alpha")) and rig.answered("alpha")
            ),
            60,
            "three replies",
        )
        assert got["big"]["reason"] == "image_too_large", got["big"]
        assert "600x600 RGB (360,000 pixels)" in got["big"]["message"]
        assert "over daemon.max_decode_bytes (1 MiB" in got["big"]["message"]
        assert "error" not in got["small"] and got["small"]["result"][0]["label"]
        assert "error" not in got["octet"] and got["octet"]["meta"]["format"] == "JPEG"
        # a reload that raises the budget applies to the link and the workers
        d.reload(d.config.read_text().replace("max_decode_bytes = 1048576\n", ""))
        wait_for(lambda: rig.events("reload_ok"), 30, "reload_ok")
        wait_for(lambda: rig.placement("alpha"), 30, "alpha placed again")
        rig.sub.publish(topic, encoded((600, 600), "PNG"), CorrelationData=b"big-after")
        after = wait_for(lambda: rig.answered("alpha").get("big-after"), 60, "big-after")
        assert "error" not in after and "reason" not in after, after
        assert d.stop() == 0
