"""Workers over the real runtime: real Coral models on the CPU, and simulated Edge TPUs
through the fake libedgetpu (tests/native/fake_edgetpu.c) for faults the CPU cannot show."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgetpud_plugins.classify import Classify, ClassifyConfig
from numpy.typing import NDArray

from edgetpud.errors import DeviceError, ModelError
from edgetpud.labels import load_labels
from edgetpud.messages import Request
from edgetpud.preprocess import make_preprocess
from edgetpud.runtime import Session, open_session
from edgetpud.workers import ModelQueue, Worker
from tests.support.fakelib import Accelerators, Control, FakeLib, make_control
from tests.support.polling import wait_for
from tests.support.workers import Collector, lanes_alive

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
    wait_for(lambda: len(sink.results) == 2, what="2 classifications")
    assert opened_in == ["worker:m@cpu"]
    cat_labels = [c["label"] for c in sink.by_id(cat.id).output]
    assert any("cat" in label for label in cat_labels), cat_labels
    assert sink.by_id(bird.id).output[0]["label"] == "chickadee"
    timing = sink.by_id(cat.id).timing
    assert timing is not None and timing.invoke_ms > 0 and timing.preprocess_ms > 0
    assert w.stop(time.monotonic() + 60) == []
    wait_for(lambda: not lanes_alive(), what="worker thread to end")
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
    wait_for(lambda: not w.alive and bool(sink.reports), what="open failure report")
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
    wait_for(lambda: len(sink.results) == 1, what="an answer")
    assert sink.by_id(bad.id).error.startswith("bad request: ")
    assert "invoke_error" not in sink.kinds()
    w.stop(time.monotonic() + 60)


# -- simulated Edge TPUs through the fake libedgetpu ---------------------------------------------


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Control:
    return make_control(tmp_path, monkeypatch, mode="simulate", invoke_ms=1)


def tpu_worker(
    models_dir: Path,
    lib: FakeLib,
    queue: ModelQueue,
    sink: Collector,
    device: str,
    *,
    model: str = EDGETPU_MODEL,
    stall_timeout: float = 60,
) -> Worker:
    def opener() -> Session:
        return open_session(models_dir / model, device, library=str(lib.path))

    def tensor(req: Request, info: Any) -> list[NDArray[Any]]:
        return [np.full(info.inputs[0].shape, req.payload, dtype=np.uint8)]

    def checksum(outputs: list[NDArray[Any]], req: Request, info: Any) -> Any:
        return int(outputs[0].sum())

    return Worker(
        "m",
        device,
        queue,
        opener,
        tensor,
        checksum,
        sink.on_result,
        sink.on_report,
        stall_timeout=stall_timeout,
    )


def tensor_req(value: int) -> Request:
    return Request(model="m", payload=value, kind="array")


def test_worker_runs_on_the_physical_port_it_names(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    for port in ("2-1", "2-2", "2-3"):
        bed.add_usb(port)
    q = ModelQueue("m", 64, "block")
    sink = Collector()
    w = tpu_worker(models_dir, lib, q, sink, "usb:2-3")
    w.start()
    sent = [tensor_req(i) for i in range(10)]
    for r in sent:
        q.put(r)
    wait_for(lambda: len(sink.results) == 10, what="10 results")
    assert all(sink.by_id(r.id).ok for r in sent)
    assert lib.invokes("2-3") == 10
    assert lib.invokes("2-1") == lib.invokes("2-2") == 0
    w.stop(time.monotonic() + 60)


def test_refused_device_is_an_open_failure_naming_it(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    control.set(fail_open=["2-2"])
    q = ModelQueue("m", 64, "block")
    q.put(tensor_req(1))
    sink = Collector()
    w = tpu_worker(models_dir, lib, q, sink, "usb:2-2")
    w.start()
    wait_for(lambda: not w.alive and bool(sink.reports), what="open failure")
    (report,) = sink.reports
    assert report.kind == "open_failed" and isinstance(report.exc, DeviceError)
    assert "usb:2-2" in report.error
    assert q.depth == 1  # nothing taken, nothing lost


def test_invoke_errors_are_answered_and_the_worker_recovers(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    bed.add_usb("2-1")
    control.set(fail_invoke=["2-1"])
    q = ModelQueue("m", 64, "block")
    sink = Collector()
    w = tpu_worker(models_dir, lib, q, sink, "usb:2-1")
    w.start()
    failing = [tensor_req(1), tensor_req(2)]
    for r in failing:
        q.put(r)
    wait_for(lambda: len(sink.results) == 2, what="2 error results")
    for r in failing:
        assert "invoke failed on usb:2-1" in sink.by_id(r.id).error
    # the answer (post thread) and the report (invoke thread) race: wait for both reports
    wait_for(lambda: sink.kinds().count("invoke_error") == 2, what="2 invoke_error reports")
    errors = [r for r in sink.reports if r.kind == "invoke_error"]
    assert [r.consecutive_errors for r in errors] == [1, 2]

    control.set(fail_invoke=None)
    good = tensor_req(3)
    q.put(good)
    wait_for(lambda: len(sink.results) == 3, what="a good result")
    assert sink.by_id(good.id).ok
    wait_for(lambda: sink.kinds()[-1] == "recovered", what='a "recovered" report')
    w.stop(time.monotonic() + 60)


def test_model_with_an_unknown_op_fails_at_open_and_takes_no_work(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    bed.add_usb("2-1")
    q = ModelQueue("m", 64, "block")
    q.put(tensor_req(1))
    sink = Collector()
    w = tpu_worker(models_dir, lib, q, sink, "usb:2-1", model="model_invoking_error.tflite")
    w.start()
    wait_for(lambda: not w.alive and bool(sink.reports), what="open failure")
    (report,) = sink.reports
    assert report.kind == "open_failed" and isinstance(report.exc, ModelError)
    assert "fake-op-double" in report.error
    assert q.depth == 1


def test_hung_device_loses_no_request(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    control.set(hang=["2-1"])
    q = ModelQueue("m", 64, "block")
    sink = Collector()
    hung = tpu_worker(models_dir, lib, q, sink, "usb:2-1", stall_timeout=0.5)
    hung.start()
    sent = [tensor_req(i) for i in range(20)]
    for r in sent:
        q.put(r)
    wait_for(lambda: lib.hanging("2-1") == 1, what="the invoke on 2-1 to hang")
    # What the service does each tick: check for stalls, then move the work.
    wait_for(lambda: hung.check_stall(time.monotonic()), what="stall detection")
    assert hung.state == "stalled"
    assert [r.kind for r in sink.reports] == ["opened", "stalled"]
    good = tpu_worker(models_dir, lib, q, sink, "usb:2-2")
    good.start()
    wait_for(lambda: len(sink.results) == 20, what="all 20 answered")
    ids = sink.ids()
    assert all(ids[r.id] == 1 for r in sent)
    assert {res.device for res in sink.results} == {"usb:2-2"}
    assert max(res.request.attempts for res in sink.results) == 1

    control.set(hang=None)  # the device answers at last: its late result is discarded
    good.stop(time.monotonic() + 60)
    wait_for(lambda: not lanes_alive(), what="threads back to baseline")
    assert sum(sink.ids().values()) == 20


def test_stop_drains_the_in_flight_request(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    bed.add_usb("2-1")
    control.set(invoke_ms=300)
    q = ModelQueue("m", 64, "block")
    sink = Collector()
    w = tpu_worker(models_dir, lib, q, sink, "usb:2-1")
    w.start()
    sent = [tensor_req(i) for i in range(5)]
    for r in sent:
        q.put(r)
    wait_for(lambda: w.stats().in_flight, what="a request in flight")
    assert w.stop(time.monotonic() + 60) == []
    queued = q.drain()
    answered = sink.ids()
    assert answered[sent[0].id] == 1 and sink.by_id(sent[0].id).ok
    assert all(answered[r.id] + queued.count(r) == 1 for r in sent)
    assert sink.kinds() == ["opened", "stopped"]
    wait_for(lambda: not lanes_alive(), what="threads back to baseline")
