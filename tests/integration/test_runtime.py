"""The runtime over real parts: tflite_runtime, the real Coral models, and the test
libedgetpu (tests/native/fake_edgetpu.c) under umockdev for the Edge TPU paths."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from edgetpud.devices.access import DeviceBusy
from edgetpud.errors import DeviceError, ModelError
from edgetpud.labels import load_labels
from edgetpud.runtime import (
    DeviceUnavailable,
    InvokeError,
    PrepareFailed,
    RuntimeMissing,
    Session,
    open_session,
    runtime_name,
)
from tests.support.fakelib import Control, FakeLib, held_elsewhere, make_control
from tests.support.umock import umock

if TYPE_CHECKING:
    from tests.support.umock import Testbed

__all__ = ["umock"]  # the fixture

CPU_128 = "mobilenet_v1_0.25_128_quant.tflite"
CPU_160 = "mobilenet_v1_0.5_160_quant.tflite"
TPU_128 = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
TPU_160 = "mobilenet_v1_0.5_160_quant_edgetpu.tflite"
# ImageNet (with background at 0): 8-25 and 81-101 and 128-147 are birds; 282-294 are cats.
BIRDS = set(range(8, 26)) | set(range(81, 102)) | set(range(128, 148))
CATS = set(range(282, 295))


def image_tensor(path: Path, session: Session) -> npt.NDArray[np.uint8]:
    _, height, width, _ = session.info.inputs[0].shape
    image = Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)[np.newaxis]


def top3(session: Session, image: Path) -> list[int]:
    (scores,) = session.invoke([image_tensor(image, session)])
    return [int(i) for i in np.argsort(-scores.reshape(-1).astype(np.int32), kind="stable")[:3]]


def test_runtime_is_tflite_runtime() -> None:
    assert runtime_name() == "tflite_runtime"
    assert runtime_name("tflite_runtime") == "tflite_runtime"


def test_a_missing_pinned_runtime_says_how_to_install_it_or_to_use_auto() -> None:
    if importlib.util.find_spec("ai_edge_litert") is not None:
        assert runtime_name("ai_edge_litert") == "ai_edge_litert"
        return
    with pytest.raises(ModelError) as err:
        runtime_name("ai_edge_litert")
    message = str(err.value)
    assert message.startswith('runtime.runtime = "ai_edge_litert" but it is not importable')
    assert "pip install ai-edge-litert" in message and 'runtime.runtime = "auto"' in message
    assert "neither" not in message


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ModelError, match="unknown TFLite runtime"):
        runtime_name("tensorflow")


@pytest.mark.parametrize("model", [CPU_128, CPU_160])
def test_cpu_models_classify_the_test_images(models_dir: Path, model: str) -> None:
    labels = load_labels(models_dir / "imagenet_labels.txt")
    with open_session(models_dir / model, "cpu", cpu_threads=1) as session:
        cat = top3(session, models_dir / "cat.bmp")
        bird = top3(session, models_dir / "bird.bmp")
        assert session.device == "cpu" and session.runtime == "tflite_runtime"
        assert session.invocations == 2
    assert CATS & set(cat), [labels.name(i) for i in cat]
    assert bird[0] in BIRDS, [labels.name(i) for i in bird]
    assert session.closed


@pytest.mark.parametrize("model", [TPU_128, TPU_160])
def test_edgetpu_models_are_refused_on_cpu_naming_cpu_model(models_dir: Path, model: str) -> None:
    with pytest.raises(ModelError, match=r"compiled for the Edge TPU.*cpu_model"):
        open_session(models_dir / model, "cpu")


def test_invoking_error_model_fails_on_cpu_with_the_op_named(models_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"fake-op-double"):
        open_session(models_dir / "model_invoking_error.tflite", "cpu")


def test_truncated_model_is_a_model_error_not_a_crash(models_dir: Path, tmp_path: Path) -> None:
    # tflite_runtime 2.14 segfaults on this file; open_session must refuse it before.
    data = (models_dir / CPU_128).read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 10])
    with pytest.raises(ModelError, match=r"truncated or corrupt"):
        open_session(cut, "cpu")


def test_stale_info_is_not_trusted(models_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes((models_dir / CPU_128).read_bytes())
    with open_session(model, "cpu") as session:
        info = session.info
    model.write_bytes(model.read_bytes()[:5000])  # replaced by a broken copy after inspection
    with pytest.raises(ModelError, match=r"truncated or corrupt"):
        open_session(model, "cpu", info=info)


def test_wrong_input_is_a_model_error_and_session_survives(models_dir: Path) -> None:
    with open_session(models_dir / CPU_128, "cpu") as session:
        with pytest.raises(ModelError, match=r"wants uint8 \[1, 128, 128, 3\]"):
            session.invoke([np.zeros((1, 64, 64, 3), np.uint8)])
        with pytest.raises(ModelError, match=r"takes 1 input"):
            session.invoke([])
        assert top3(session, models_dir / "cat.bmp")
    with pytest.raises(ModelError, match="closed"):
        session.invoke([np.zeros((1, 128, 128, 3), np.uint8)])
    session.close()  # idempotent


def test_an_invoker_into_given_arrays_classifies_as_invoke_does(models_dir: Path) -> None:
    """Session.invoker_into (a device host's lane): the inputs are read from the given
    arrays, the outputs land in the given arrays; same outputs as invoke, same errors."""
    with open_session(models_dir / CPU_128, "cpu", cpu_threads=1) as session:
        image = np.empty((1, 128, 128, 3), np.uint8)
        scores = np.full((1, 1001), 7, np.uint8)
        run = session.invoker_into([image], [scores])
        for name in ("cat.bmp", "bird.bmp"):
            image[...] = image_tensor(models_dir / name, session)
            run()
            (want,) = session.invoke([image])
            assert np.array_equal(scores, want)
        assert set(np.argsort(-scores.reshape(-1).astype(np.int32))[:3].tolist()) & BIRDS
        with pytest.raises(ModelError, match=r"1 input\(s\) and 1 output\(s\), got 1 and 0"):
            session.invoker_into([image], [])
        wrong = session.invoker_into([np.zeros((1, 64, 64, 3), np.uint8)], [scores])
        with pytest.raises(ModelError, match=r"wants uint8 \[1, 128, 128, 3\]"):
            wrong()
    with pytest.raises(ModelError, match="closed"):
        run()


def test_unknown_device_string(models_dir: Path) -> None:
    with pytest.raises(DeviceError, match=r"unknown device 'gpu:0'.*edgetpud devices"):
        open_session(models_dir / TPU_128, "gpu:0")


def test_missing_library_names_the_package(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeMissing, match=r"libedgetpu1-std") as err:
        open_session(models_dir / TPU_128, "usb:0", library=str(tmp_path / "libedgetpu.so.1"))
    assert err.value.library.endswith("libedgetpu.so.1")
    with pytest.raises(RuntimeMissing, match=r"libedgetpu1-std"):
        open_session(models_dir / TPU_128, "usb:2-1", library=str(tmp_path / "libedgetpu.so.1"))


# Through the test libedgetpu. Devices come from a umockdev testbed; the library lists
# them in libedgetpu's order (firmware-mode USB first, then ready USB, then PCIe).


@dataclass
class Tpus:
    """The Coral docs' hub tree (2-3.1, 2-3.2.1, 2-3.2.2) plus apex_0, and the test library."""

    lib: Path
    fake: FakeLib
    control: Control
    ports: dict[str, str]


@pytest.fixture
def tpus(
    umock: Testbed, fake_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Tpus]:
    ports = umock.coral_docs_tree()
    ports["apex_0"] = umock.add_apex(0, "0000:03:00.0")
    fake = FakeLib(fake_lib)
    fake.reset()
    control = make_control(tmp_path, monkeypatch, mode="simulate", invoke_ms=1)
    yield Tpus(fake_lib, fake, control, ports)
    fake.reset()


def listed_usb(fake_lib: Path) -> list[str]:
    """Port names of USB devices in the library's own edgetpu_list_devices() order."""
    import ctypes

    class Dev(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("path", ctypes.c_char_p)]

    lib = ctypes.CDLL(str(fake_lib))
    lib.edgetpu_list_devices.restype = ctypes.POINTER(Dev)
    lib.edgetpu_list_devices.argtypes = [ctypes.POINTER(ctypes.c_size_t)]
    lib.edgetpu_free_devices.argtypes = [ctypes.POINTER(Dev)]
    count = ctypes.c_size_t()
    devs = lib.edgetpu_list_devices(ctypes.byref(count))
    try:
        return [
            bytes(devs[i].path).decode().rsplit("/", 1)[-1]
            for i in range(count.value)
            if devs[i].type == 1
        ]
    finally:
        lib.edgetpu_free_devices(devs)


def test_passthrough_gives_real_outputs_through_the_delegate(models_dir: Path, tpus: Tpus) -> None:
    tpus.control.set(mode="passthrough")
    with open_session(models_dir / CPU_128, "cpu", cpu_threads=1) as cpu:
        expected = cpu.invoke([image_tensor(models_dir / "cat.bmp", cpu)])[0]
    with open_session(models_dir / CPU_128, "usb:1", library=str(tpus.lib)) as session:
        assert session.delegate_device == "usb:1"
        assert tpus.fake.created() == 1
        got = session.invoke([image_tensor(models_dir / "cat.bmp", session)])[0]
    np.testing.assert_array_equal(got, expected)
    assert tpus.fake.destroyed() == 1  # closing released the delegate


def test_identity_opens_the_right_physical_port(models_dir: Path, tpus: Tpus) -> None:
    order = listed_usb(tpus.lib)
    assert sorted(order) == ["2-3.1", "2-3.2.1", "2-3.2.2"]
    for port in order:
        with open_session(models_dir / TPU_128, f"usb:{port}", library=str(tpus.lib)) as s:
            assert s.delegate_device == f"/sys/bus/usb/devices/{port}"
            assert tpus.fake.last_device().endswith("/" + port)
            s.invoke([np.zeros((1, 128, 128, 3), np.uint8)])
        assert tpus.fake.invokes(port) == 1
    with open_session(models_dir / TPU_128, "pci:0000:03:00.0", library=str(tpus.lib)) as s:
        assert s.delegate_device == "/dev/apex_0"
        assert tpus.fake.last_device() == "/dev/apex_0"


def test_refused_context_reports_the_port(models_dir: Path, tpus: Tpus) -> None:
    tpus.control.set(fail_open=["2-3.2.2"])
    with pytest.raises(DeviceUnavailable) as err:
        open_session(models_dir / TPU_128, "usb:2-3.2.2", library=str(tpus.lib))
    assert (err.value.identity, err.value.port) == ("usb:2-3.2.2", "2-3.2.2")
    assert "2-3.2.2" in str(err.value)
    with open_session(models_dir / TPU_128, "usb:2-3.1", library=str(tpus.lib)):
        pass  # the other ports still open


def test_unlisted_identity_is_unavailable(models_dir: Path, tpus: Tpus) -> None:
    with pytest.raises(DeviceUnavailable) as err:
        open_session(models_dir / TPU_128, "usb:1-9", library=str(tpus.lib))
    assert err.value.port == "1-9"


def test_refused_index_is_unavailable(models_dir: Path, tpus: Tpus) -> None:
    tpus.control.set(fail_open="*")
    with pytest.raises(DeviceUnavailable, match=r"usb:0"):
        open_session(models_dir / TPU_128, "usb:0", library=str(tpus.lib))
    with pytest.raises(DeviceUnavailable, match=r"usb:7"):
        open_session(models_dir / TPU_128, "usb:7", library=str(tpus.lib))


def test_prepare_failure(models_dir: Path, tpus: Tpus) -> None:
    tpus.control.set(fail_prepare="*")
    with pytest.raises(PrepareFailed, match=r"could not prepare mobilenet"):
        open_session(models_dir / TPU_128, "pci:0", library=str(tpus.lib))
    assert tpus.fake.destroyed() == tpus.fake.created()  # nothing leaked


def test_invoke_error_leaves_the_session_usable(models_dir: Path, tpus: Tpus) -> None:
    zeros = np.zeros((1, 128, 128, 3), np.uint8)
    with open_session(models_dir / TPU_128, "usb:0", library=str(tpus.lib)) as session:
        session.invoke([zeros])
        tpus.control.set(fail_invoke="*")
        with pytest.raises(InvokeError, match=r"inference of .* on usb:0 failed"):
            session.invoke([zeros])
        with pytest.raises(InvokeError, match=r"inference of .* on usb:0 failed"):
            session.invoker_into([zeros], [np.zeros((1, 1001), np.uint8)])()
        tpus.control.set(fail_invoke=None)
        (out,) = session.invoke([zeros])
        assert out.shape == (1, 1001)
        assert session.invocations == 2


def test_close_during_a_hung_invoke_waits_for_it(models_dir: Path, tpus: Tpus) -> None:
    session = open_session(models_dir / TPU_128, "usb:0", library=str(tpus.lib))
    port = tpus.fake.last_device().rsplit("/", 1)[-1]
    tpus.control.set(hang="*")
    results: list[object] = []
    worker = threading.Thread(
        target=lambda: results.append(session.invoke([np.zeros((1, 128, 128, 3), np.uint8)])),
        daemon=True,
    )
    worker.start()
    deadline = time.monotonic() + 30
    while not tpus.fake.hanging(port) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tpus.fake.hanging(port)
    session.close()  # an abandoning supervisor: must not free the interpreter under the invoke
    assert not session.closed and tpus.fake.destroyed() == 0
    tpus.control.set(hang=None)
    worker.join(30)
    assert not worker.is_alive()
    assert len(results) == 1  # the invoke finished normally
    assert session.closed and tpus.fake.destroyed() == 1


def test_a_device_held_by_another_process_is_busy_not_a_bad_port(
    models_dir: Path, tpus: Tpus
) -> None:
    with held_elsewhere(tpus.lib, "2-3.1") as holder:
        with pytest.raises(DeviceBusy) as err:
            open_session(models_dir / TPU_128, "usb:2-3.1", library=str(tpus.lib))
        assert not isinstance(err.value, DeviceUnavailable)  # never learned as a bad port
        assert err.value.holders[0].pid == holder.pid and err.value.pids == [holder.pid]
        assert f"pid {holder.pid} (python" in str(err.value)
        assert "Stop that process" in str(err.value)
        with open_session(models_dir / TPU_128, "usb:2-3.2.1", library=str(tpus.lib)) as s:
            s.invoke([np.zeros((1, 128, 128, 3), np.uint8)])  # the others still open
    with open_session(models_dir / TPU_128, "usb:2-3.1", library=str(tpus.lib)) as s:
        s.invoke([np.zeros((1, 128, 128, 3), np.uint8)])  # free once the holder is gone


def test_a_firmware_load_finishing_between_look_up_and_open_cannot_swap_devices(
    models_dir: Path, tpus: Tpus, umock: Testbed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's swap, made deterministic: 2-3.2.1 is off the bus for its firmware load when
    the session for 2-3.1 looks its device up, and back (listed before 2-3.1) by the time
    libedgetpu opens. An index looked up then ("usb:1") names 2-3.2.1 at the open; the path
    does not. The udev event is placed between the two calls by wrapping the look-up (the
    one seam: its timing cannot be produced otherwise in one process)."""
    from edgetpud import edgetpu_c

    parent, name = tpus.ports["2-3.2.1"].rsplit("/", 1)
    umock.unplug(tpus.ports["2-3.2.1"])  # the load's re-enumeration gap
    before = listed_usb(tpus.lib)
    back: list[str] = []

    def looked_up_then_back(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            found = original(*args, **kwargs)
            if not back:
                back.append(umock.add_accelerator(parent, name))  # back, ready
            return found

        return wrapper

    # whichever look-up the runtime uses: by path now, by index before
    for attr in ("find_device", "delegate_device_string"):
        monkeypatch.setattr(edgetpu_c, attr, looked_up_then_back(getattr(edgetpu_c, attr)))

    with open_session(models_dir / TPU_128, "usb:2-3.1", library=str(tpus.lib)) as session:
        after = listed_usb(tpus.lib)
        assert back and before.index("2-3.1") != after.index("2-3.1"), (before, after)
        assert tpus.fake.last_device() == "/sys/bus/usb/devices/2-3.1"
        assert session.delegate_device == "/sys/bus/usb/devices/2-3.1"
        session.invoke([np.zeros((1, 128, 128, 3), np.uint8)])
    assert tpus.fake.invokes("2-3.1") == 1 and tpus.fake.invokes("2-3.2.1") == 0


def test_performance_applies_when_opened_by_path(models_dir: Path, tpus: Tpus) -> None:
    with open_session(models_dir / TPU_128, "usb:2-3.1", library=str(tpus.lib), performance="max"):
        assert tpus.fake.context_options("2-3.1") == "Performance=Max"
