"""Workers over the real runtime: real Coral models on the CPU, and simulated Edge TPUs
through the fake libedgetpu (tests/native/fake_edgetpu.c) for faults the CPU cannot show."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from edgetpud_plugins.classify import Classify, ClassifyConfig
from numpy.typing import NDArray

from edgetpud.errors import ModelError
from edgetpud.labels import load_labels
from edgetpud.messages import Request
from edgetpud.preprocess import make_preprocess
from edgetpud.runtime import Session, open_session
from edgetpud.workers import ModelQueue, Worker
from tests.support.workers import Collector, wait_until

CPU_MODEL = "mobilenet_v1_0.25_128_quant.tflite"
EDGETPU_MODEL = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"


def classify(models_dir: Path) -> Callable[[list[NDArray[Any]], Request, Any], Any]:
    labels = load_labels(models_dir / "imagenet_labels.txt")
    made: dict[int, Classify] = {}

    def post(outputs: list[NDArray[Any]], request: Request, info: Any) -> Any:
        plugin = made.get(id(info)) or made.setdefault(
            id(info), Classify(ClassifyConfig(top_k=3), info, labels)
        )
        return plugin.process(outputs, request)

    return post


def image(models_dir: Path, name: str) -> Request:
    return Request(
        model="m", payload=(models_dir / name).read_bytes(), kind="image", meta={"file": name}
    )


def test_cpu_worker_classifies_real_images_in_its_own_thread(models_dir: Path) -> None:
    baseline = threading.active_count()
    opened_in: list[str] = []

    def opener() -> Session:
        opened_in.append(threading.current_thread().name)
        return open_session(models_dir / CPU_MODEL, "cpu", cpu_threads=1)

    q = ModelQueue("m", 8, "block")
    sink = Collector()
    w = Worker(
        "m",
        "cpu",
        q,
        opener,
        make_preprocess("stretch"),
        classify(models_dir),
        sink.on_result,
        sink.on_report,
        stall_timeout=60,
    )
    w.start()
    cat, bird = image(models_dir, "cat.bmp"), image(models_dir, "bird.bmp")
    q.put(cat)
    q.put(bird)
    wait_until(lambda: len(sink.results) == 2, what="2 classifications")
    assert opened_in == ["worker:m@cpu"]
    cat_labels = [c["label"] for c in sink.by_id(cat.id).output]
    assert any("cat" in label for label in cat_labels), cat_labels
    assert sink.by_id(bird.id).output[0]["label"] == "chickadee"
    timing = sink.by_id(cat.id).timing
    assert timing is not None and timing.invoke_ms > 0 and timing.preprocess_ms > 0
    assert w.stop(time.monotonic() + 60) == []
    wait_until(lambda: threading.active_count() == baseline, what="worker thread to end")
    assert [r.kind for r in sink.reports] == ["opened", "stopped"]


def test_edgetpu_model_on_the_cpu_is_an_open_failure_naming_cpu_model(models_dir: Path) -> None:
    q = ModelQueue("m", 8, "block")
    sink = Collector()
    w = Worker(
        "m",
        "cpu",
        q,
        lambda: open_session(models_dir / EDGETPU_MODEL, "cpu"),
        make_preprocess("stretch"),
        classify(models_dir),
        sink.on_result,
        sink.on_report,
        stall_timeout=60,
    )
    w.start()
    wait_until(lambda: not w.alive and bool(sink.reports), what="open failure report")
    (report,) = sink.reports
    assert report.kind == "open_failed"
    assert isinstance(report.exc, ModelError)
    assert "cpu_model" in report.error


def test_inputs_that_do_not_fit_the_model_are_answered_as_bad_requests(models_dir: Path) -> None:
    q = ModelQueue("m", 8, "block")
    sink = Collector()
    w = Worker(
        "m",
        "cpu",
        q,
        lambda: open_session(models_dir / CPU_MODEL, "cpu", cpu_threads=1),
        lambda req, info: [np.zeros((1, 7), np.uint8)],
        classify(models_dir),
        sink.on_result,
        sink.on_report,
        stall_timeout=60,
    )
    w.start()
    bad = Request(model="m", payload=b"", kind="tensor")
    q.put(bad)
    wait_until(lambda: len(sink.results) == 1, what="an answer")
    assert sink.by_id(bad.id).error.startswith("bad request: ")
    assert "invoke_error" not in sink.kinds()
    w.stop(time.monotonic() + 60)
