"""Built-in postprocessors and sources on real models (CPU TFLite runtime)."""

from __future__ import annotations

import base64
import dataclasses
import io
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgetpud import modelfile, plugins
from edgetpud.labels import load_labels
from edgetpud.messages import Request
from edgetpud.preprocess import make_preprocess
from tests.support.plugins import Pipeline, plugin_config
from tests.support.ssd_model import write_ssd_model

EXPECTED = {
    "bird.bmp": ("bird", "finch", "jay", "robin", "chickadee", "brambling", "bunting", "junco"),
    "cat.bmp": ("cat",),
    "sunflower.bmp": ("daisy", "sunflower", "coneflower"),
}


@pytest.mark.parametrize(
    "model", ["mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite"]
)
def test_classify_gives_sensible_labels_for_the_coral_images(models_dir: Path, model: str) -> None:
    labels = load_labels(models_dir / "imagenet_labels.txt")
    classify = Pipeline(models_dir / model, "classify", labels, top_k=5)
    for image, words in EXPECTED.items():
        result = classify((models_dir / image).read_bytes())
        assert len(result) == 5
        assert [r["score"] for r in result] == sorted((r["score"] for r in result), reverse=True)
        assert all(0.0 <= r["score"] <= 1.0 for r in result), result
        top3 = " ".join(r["label"].lower() for r in result[:3])
        assert any(w in top3 for w in words), f"{image}: {result}"
        assert result[0]["label"] == labels[result[0]["id"]]


def test_classify_threshold_and_no_labels(models_dir: Path) -> None:
    classify = Pipeline(
        models_dir / "mobilenet_v1_0.25_128_quant.tflite", "classify", top_k=10, threshold=0.05
    )
    result = classify((models_dir / "cat.bmp").read_bytes())
    assert 1 <= len(result) < 10
    assert all(r["score"] >= 0.05 for r in result)
    assert result[0]["label"] == str(result[0]["id"])


@pytest.mark.parametrize(
    ("dtype", "zero_point"), [(np.uint8, 0), (np.uint8, 17), (np.int8, -128), (np.int8, 5)]
)
def test_classify_scores_are_the_dequantized_outputs(
    models_dir: Path, dtype: type[np.integer[Any]], zero_point: int
) -> None:
    from edgetpud_plugins.classify import Classify, ClassifyConfig

    info = modelfile.inspect_model(models_dir / "mobilenet_v1_0.25_128_quant.tflite")
    scale = 0.0123
    spec = dataclasses.replace(
        info.outputs[0], dtype=np.dtype(dtype).name, scale=scale, zero_point=zero_point
    )
    info = dataclasses.replace(info, outputs=(spec,))
    classify = Classify(ClassifyConfig(top_k=4), info, None)
    limits = np.iinfo(dtype)
    raw = np.random.default_rng(zero_point + 200).integers(
        limits.min, limits.max, (1, 1001), dtype=dtype
    )  # below the maximum, so the two set next are the only best scores
    raw[0, 7] = limits.max
    raw[0, 900] = limits.max
    result = classify.process([raw], Request(model="m", payload=b"", kind="tensor"))
    real = (raw.reshape(-1).astype(np.float64) - zero_point) * scale
    expected = sorted(range(1001), key=lambda i: -real[i])[:4]
    assert sorted(r["id"] for r in result[:2]) == [7, 900]
    assert [r["score"] for r in result] == pytest.approx([real[i] for i in expected], abs=1e-6)
    assert [r["score"] for r in result] == sorted((r["score"] for r in result), reverse=True)


def test_detect_returns_boxes_in_source_image_pixels(tmp_path: Path) -> None:
    boxes = np.array(
        [[0.25, 0.125, 0.75, 0.5], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.6, 0.6]], np.float32
    )
    model = write_ssd_model(
        tmp_path / "ssd.tflite",
        boxes=boxes,
        classes=[17, 0, 3],
        scores=[0.9, 0.6, 0.2],
        size=(64, 64),
    )
    (tmp_path / "labels.txt").write_text("0  person\n17  cat\n")
    labels = load_labels(tmp_path / "labels.txt")
    image = io.BytesIO()
    Image.new("RGB", (640, 320)).save(image, format="PNG")  # 2:1 → letterboxed into 64x64
    detect = Pipeline(model, "detect", labels, resize="letterbox", threshold=0.5)
    result = detect(image.getvalue())
    assert [d["id"] for d in result] == [17, 0]
    assert result[0]["label"] == "cat"
    # model y 0.25..0.75 of 64 = 16..48; the image fills y 16..48 (scale 0.1, offset 16)
    assert result[0]["box"] == {"xmin": 80.0, "ymin": 0.0, "xmax": 320.0, "ymax": 320.0}
    assert result[1]["box"] == {"xmin": 0.0, "ymin": 0.0, "xmax": 640.0, "ymax": 320.0}
    stretch = Pipeline(model, "detect", labels, resize="stretch", threshold=0.1, max_detections=2)
    result = stretch(image.getvalue())
    assert len(result) == 2
    assert result[0]["box"] == {"xmin": 80.0, "ymin": 80.0, "xmax": 320.0, "ymax": 240.0}


def test_detect_on_a_classifier_is_refused_at_start_with_what_to_set(models_dir: Path) -> None:
    """Not an error per request: the model is disabled once, with the setting to change."""
    with pytest.raises(plugins.PluginError) as err:
        Pipeline(models_dir / "mobilenet_v1_0.25_128_quant.tflite", "detect", None)
    message = str(err.value)
    assert "4 outputs" in message and "this model has 1" in message
    assert 'postprocess type to "classify" or "raw"' in message


def test_segment_counts_pixels_per_class() -> None:
    spec = modelfile.TensorSpec("mask", (1, 4, 4), "int32")
    info = type("Info", (), {"inputs": (), "outputs": (spec,)})()
    cls = plugins.registry().get("postprocess", "segment")
    post = cls(plugin_config("postprocess", "segment", ignore=[0]), info, None)  # type: ignore[call-arg]
    mask = np.zeros((1, 4, 4), np.int32)
    mask[0, :2, :] = 5
    mask[0, 3, 0] = 2
    out = post.process([mask], Request("m", b""))  # type: ignore[attr-defined]
    assert out["size"] == [4, 4]
    assert out["dominant"] == 5
    assert [(c["id"], c["pixels"]) for c in out["classes"]] == [(5, 8), (2, 1)]
    scores = np.zeros((1, 2, 2, 3), np.float32)
    scores[0, :, :, 1] = 1.0
    out = post.process([scores], Request("m", b""))  # type: ignore[attr-defined]
    assert out["classes"] == [{"id": 1, "label": "1", "pixels": 4, "fraction": 1.0}]


def test_raw_sends_small_outputs_as_lists_and_large_as_base64(models_dir: Path) -> None:
    small = Pipeline(models_dir / "mobilenet_v1_0.25_128_quant.tflite", "raw", max_list=2000)
    image = (models_dir / "cat.bmp").read_bytes()
    [tensor] = small(image)
    assert tensor["shape"] == [1, 1001]
    assert tensor["dtype"] == "uint8"
    assert len(tensor["data"][0]) == 1001
    big = Pipeline(models_dir / "mobilenet_v1_0.25_128_quant.tflite", "raw", max_list=10)
    [packed] = big(image)
    raw = np.frombuffer(base64.b64decode(packed["base64"]), np.uint8)
    assert raw.tolist() == tensor["data"][0]
    assert packed["scale"] > 0


def test_synthetic_source_feeds_a_model_at_its_rate(models_dir: Path) -> None:
    info = modelfile.inspect_model(models_dir / "mobilenet_v1_0.25_128_quant.tflite")
    got: queue.Queue[Request] = queue.Queue()
    full = threading.Event()

    def emit(request: Request) -> bool:
        if full.is_set():
            full.clear()
            return False  # once: the source must retry, not drop
        got.put(request)
        return True

    full.set()
    config = plugin_config("source", "synthetic", rate=0, count=12, width=320, height=240)
    cls = plugins.registry().get("source", "synthetic")
    source = cls("m", config, info, emit)  # type: ignore[call-arg]
    source.start()  # type: ignore[attr-defined]
    try:
        frames = [got.get(timeout=30) for _ in range(12)]
    finally:
        source.stop()  # type: ignore[attr-defined]
        source.stop()  # type: ignore[attr-defined]
    assert [r.meta["frame"] for r in frames] == list(range(12))
    assert frames[0].kind == "array"
    [tensor] = make_preprocess(source.resize)(frames[0], info)  # type: ignore[attr-defined]
    assert tensor.shape == (1, 128, 128, 3)
    assert frames[0].meta["image_size"] == [320, 240]
    assert got.empty()


def test_registry_reports_each_builtin_and_the_camera_install_hint() -> None:
    statuses = {s["name"]: s for s in plugins.discover().health()}
    for name in ("mqtt", "directory", "synthetic", "classify", "detect", "segment", "raw"):
        assert statuses[name]["state"] == "loaded", statuses[name]
    camera = statuses["camera"]
    try:
        import cv2  # noqa: F401
    except ImportError:
        assert camera["state"] == "environment_error"
        assert "pip install opencv-python-headless" in camera["error"]
    else:  # pragma: no cover - OpenCV present
        assert camera["state"] == "loaded"
    mqtt = plugins.registry().get("source", "mqtt")
    assert getattr(mqtt, "transport") == "mqtt"  # noqa: B009
