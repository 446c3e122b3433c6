"""`edgetpud infer` as a user runs it: a subprocess, JSON lines on stdout, errors on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.fakelib import make_control
from tests.support.umock import umock

if TYPE_CHECKING:
    import pytest

    from tests.support.umock import Testbed

__all__ = ["umock"]  # the fixture

CPU_128 = "mobilenet_v1_0.25_128_quant.tflite"
CATS = set(range(282, 295))  # ImageNet cat classes (background at 0)


def infer(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetpud", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_cat_is_in_the_top_3(models_dir: Path) -> None:
    done = infer(
        "--model", models_dir / CPU_128, "--labels", models_dir / "imagenet_labels.txt",
        models_dir / "cat.bmp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (record,) = records(done.stdout)
    assert record["schema"] == "edgetpud.infer/1"
    assert record["image"] == str(models_dir / "cat.bmp")
    assert record["model"] == str(models_dir / CPU_128)
    assert (record["device"], record["runtime"]) == ("cpu", "tflite_runtime")
    assert set(record["timing_ms"]) == {"preprocess", "invoke", "postprocess"}
    classes = record["classes"]
    assert len(classes) == 3
    assert any(c["id"] in CATS and "cat" in c["label"] for c in classes), classes
    scores = [c["score"] for c in classes]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_a_label_file_of_another_model_is_warned_about(models_dir: Path) -> None:
    """COCO's 90 labels on a 1001-class ImageNet classifier: results still print, with a warning."""
    done = infer(
        "--model", models_dir / CPU_128, "--labels", models_dir / "coco_labels.txt",
        models_dir / "cat.bmp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(records(done.stdout)) == 1
    warning = [x for x in done.stderr.splitlines() if "warning" in x]
    assert len(warning) == 1, done.stderr
    assert "coco_labels.txt" in warning[0] and "1001 classes" in warning[0]
    assert "is it this model's label file?" in warning[0]
    clean = infer(
        "--model", models_dir / CPU_128, "--labels", models_dir / "imagenet_labels.txt",
        models_dir / "cat.bmp",
    )  # fmt: skip
    assert "warning" not in clean.stderr, clean.stderr


def test_one_line_per_image_and_top_k(models_dir: Path) -> None:
    done = infer(
        "--model", models_dir / "mobilenet_v1_0.5_160_quant.tflite", "--top-k", "5",
        models_dir / "bird.bmp", models_dir / "cat.bmp", models_dir / "sunflower.bmp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = records(done.stdout)
    assert [Path(r["image"]).name for r in out] == ["bird.bmp", "cat.bmp", "sunflower.bmp"]
    assert all(len(r["classes"]) == 5 for r in out)
    # no label file: the label is the class id
    assert all(c["label"] == str(c["id"]) for r in out for c in r["classes"])
    assert CATS & {c["id"] for c in out[1]["classes"]}


def test_a_missing_image_fails_alone(models_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    done = infer("--model", models_dir / CPU_128, missing, models_dir / "cat.bmp")
    assert done.returncode == 1
    assert [Path(r["image"]).name for r in records(done.stdout)] == ["cat.bmp"]
    errors = [line for line in done.stderr.splitlines() if line.startswith("edgetpud infer:")]
    assert len(errors) == 1
    assert str(missing) in errors[0] and "check the path" in errors[0]


def test_not_an_image(models_dir: Path) -> None:
    done = infer("--model", models_dir / CPU_128, models_dir / "imagenet_labels.txt")
    assert done.returncode == 1
    assert "not a readable image" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_model_is_one_line_on_stderr(models_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 100)
    done = infer("--model", bad, models_dir / "cat.bmp")
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert "is not a TensorFlow Lite model" in line


def test_edgetpu_model_on_cpu_is_refused(models_dir: Path) -> None:
    done = infer(
        "--model", models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite",
        models_dir / "cat.bmp",
    )  # fmt: skip
    assert done.returncode == 1
    assert "compiled for the Edge TPU" in done.stderr and "cpu_model" in done.stderr
    assert "Traceback" not in done.stderr


def test_on_an_edge_tpu_through_the_test_library(
    models_dir: Path,
    umock: Testbed,
    fake_lib: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    umock.coral_docs_tree()
    make_control(tmp_path, monkeypatch, mode="passthrough")  # real outputs via the delegate
    done = infer(
        "--model", models_dir / CPU_128, "--device", "usb:2-3.2.1", "--library", fake_lib,
        models_dir / "cat.bmp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (record,) = records(done.stdout)
    assert record["device"] == "usb:2-3.2.1"
    assert record["delegate_device"] == "/sys/bus/usb/devices/2-3.2.1"  # opened by path
    assert CATS & {c["id"] for c in record["classes"]}


def test_unplugged_device_is_one_line(models_dir: Path, umock: Testbed, fake_lib: Path) -> None:
    umock.coral_docs_tree()
    done = infer(
        "--model", models_dir / CPU_128, "--device", "usb:1-4", "--library", fake_lib,
        models_dir / "cat.bmp",
    )  # fmt: skip
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "usb:1-4 could not be opened" in line and "edgetpud devices" in line


def test_a_missing_runtime_names_the_option_to_change(
    models_dir: Path, umock: Testbed, tmp_path: Path
) -> None:
    umock.coral_docs_tree()
    done = infer(
        "--model", models_dir / CPU_128, "--device", "usb:2-3.2.1",
        "--library", tmp_path / "libedgetpu.so.1", models_dir / "cat.bmp",
    )  # fmt: skip
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "cannot load the Edge TPU runtime" in line and "libedgetpu1-std" in line
    assert "set --library to its path" in line and "runtime.library" not in line


def test_a_detection_model_prints_its_detections_in_image_pixels(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from tests.support.ssd_model import write_ssd_model

    model = write_ssd_model(
        tmp_path / "ssd.tflite",
        boxes=np.array([[0.1, 0.2, 0.5, 0.6], [0.25, 0.05, 0.75, 0.4], [0, 0, 1, 1]]),
        classes=[17, 0, 62],
        scores=[0.66, 0.91, 0.3],
        size=(64, 48),
    )
    Image.new("RGB", (128, 96)).save(tmp_path / "frame.png")  # twice the input: boxes scale
    done = infer("--model", model, "--threshold", "0.4", tmp_path / "frame.png")
    assert done.returncode == 0, done.stderr
    [record] = records(done.stdout)
    assert [(d["id"], d["score"]) for d in record["detections"]] == [(0, 0.91), (17, 0.66)]
    assert record["detections"][1]["box"] == {"xmin": 25.6, "ymin": 9.6, "xmax": 76.8, "ymax": 48.0}
