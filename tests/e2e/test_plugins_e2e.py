"""Every built-in plugin through the running daemon, with results on MQTT.

The daemon runs as a subprocess on the CPU (no Edge TPU: every model here is a
CPU build with device = "cpu"); what a subscriber sees on the results topics is
what is checked. The mqtt source and raw postprocessor are exercised by
test_service.py; camera needs OpenCV, which is refused at config time with the
install hint (tests/integration/test_plugins_config.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.broker import Broker, Subscriber
from tests.support.daemon import Daemon
from tests.support.polling import wait_for
from tests.support.runtime import Op, Tensor, tflite_bytes
from tests.support.ssd_model import write_ssd_model

pytestmark = pytest.mark.e2e

BASE = "plug/box"
DEQUANTIZE = 6


def channel_map_model(path: Path, size: int = 16) -> Path:
    """A one-op segmentation model: per pixel, the scores of 3 classes are its R, G, B."""
    tensors = [
        Tensor("image", [1, size, size, 3], "uint8", (1 / 255, 0)),
        Tensor("scores", [1, size, size, 3], "float32"),
    ]
    path.write_bytes(tflite_bytes(tensors, [Op([0], [1], builtin=DEQUANTIZE)], [0], [1]))
    return path


def results(sub: Subscriber, model: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.on(f"{BASE}/models/{model}/results")]


def test_directory_synthetic_detect_segment_classify_end_to_end(
    tmp_path: Path, broker: Broker, models_dir: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    ssd = write_ssd_model(
        tmp_path / "ssd.tflite",
        boxes=np.array([[0.25, 0.25, 0.75, 0.75]], np.float32),
        classes=[1],
        scores=[0.9],
        size=(32, 32),
    )
    (tmp_path / "coco.txt").write_text("0 person\n1 bicycle\n")
    (tmp_path / "rgb.txt").write_text("red\ngreen\nblue\n")
    seg = channel_map_model(tmp_path / "channels.tflite")
    config = f"""
[daemon]
node_id = "box"
state_dir = "{tmp_path / "state"}"
health_interval = "1s"
[mqtt]
host = "127.0.0.1"
port = {{port}}
topic_prefix = "plug"

[models.files]
model = "{models_dir / "mobilenet_v1_0.25_128_quant.tflite"}"
labels = "{models_dir / "imagenet_labels.txt"}"
device = "cpu"
[models.files.source]
type = "directory"
path = "{inbox}"
settle = "200ms"
[models.files.postprocess]
type = "classify"
top_k = 3

[models.boxes]
model = "{ssd}"
labels = "{tmp_path / "coco.txt"}"
device = "cpu"
[models.boxes.source]
type = "synthetic"
rate = 20.0
count = 5
width = 64
height = 64
[models.boxes.postprocess]
type = "detect"
threshold = 0.5

[models.regions]
model = "{seg}"
labels = "{tmp_path / "rgb.txt"}"
device = "cpu"
[models.regions.source]
type = "synthetic"
rate = 20.0
count = 3
pattern = "solid"
[models.regions.postprocess]
type = "segment"
top_k = 3
"""
    (tmp_path / "state").mkdir(exist_ok=True)
    sub = Subscriber(broker, [f"{BASE}/#"]).start()
    d = Daemon(tmp_path / "daemon", config.replace("{port}", str(broker.port)))
    try:
        d.start().wait_ready()
        for name in ("cat.bmp", "bird.bmp"):
            shutil.copy(models_dir / name, inbox / name)

        # directory → classify: each file once, then moved to done/
        files = wait_for(lambda: len(results(sub, "files")) >= 2 and results(sub, "files"),
                         60, "a result per dropped file")  # fmt: skip
        by_file = {r["meta"]["file"]: r["result"] for r in files if "meta" in r}
        assert set(by_file) == {"cat.bmp", "bird.bmp"}, files
        assert any("cat" in c["label"] for c in by_file["cat.bmp"])
        wait_for(lambda: sorted(p.name for p in (inbox / "done").iterdir())
                 == ["bird.bmp", "cat.bmp"], 30, "both files moved to done/")  # fmt: skip
        assert not list(inbox.glob("*.bmp"))  # (the source keeps its journal there too)

        # synthetic → detect: the box scaled to the 64x64 source image's pixels
        boxes = wait_for(lambda: len(results(sub, "boxes")) >= 5 and results(sub, "boxes"),
                         60, "five synthetic detections")  # fmt: skip
        assert len(boxes) == 5
        det = boxes[0]["result"][0]
        assert det["label"] == "bicycle" and det["score"] == pytest.approx(0.9)
        assert det["box"] == {"xmin": 16.0, "ymin": 16.0, "xmax": 48.0, "ymax": 48.0}

        # synthetic (one flat grey) → segment: every pixel in one class
        regions = wait_for(lambda: len(results(sub, "regions")) >= 3 and results(sub, "regions"),
                           60, "three segmentations")  # fmt: skip
        seg_out = regions[0]["result"]
        assert seg_out["size"] == [16, 16]
        assert seg_out["classes"][0]["pixels"] == 256 and seg_out["classes"][0]["fraction"] == 1.0
        assert seg_out["dominant"] == seg_out["classes"][0]["id"]
        assert seg_out["classes"][0]["label"] in {"red", "green", "blue"}
        assert d.stop() == 0
    finally:
        d.close()
        sub.stop()
