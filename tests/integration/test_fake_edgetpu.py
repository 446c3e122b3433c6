"""The test Edge TPU runtime library, through the real tflite_runtime delegate-loading path."""

from __future__ import annotations

import ctypes
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetpud.edgetpu_c import EdgeTpuRef, create_delegate, library_version, list_devices
from tests.support.fakelib import (
    Accelerators,
    Control,
    FakeLib,
    expected_outputs,
    make_control,
)
from tests.support.polling import wait_for

tflite = pytest.importorskip("tflite_runtime.interpreter")

CPU_MODEL = "mobilenet_v1_0.25_128_quant.tflite"
CPU_MODEL_B = "mobilenet_v1_0.5_160_quant.tflite"
TPU_MODEL = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
TPU_MODEL_B = "mobilenet_v1_0.5_160_quant_edgetpu.tflite"
CO_A = "mobilenet_v1_0.25_128_quant_cocompiled_with_mobilenet_v1_0.5_160_quant_edgetpu.tflite"
CO_B = "mobilenet_v1_0.5_160_quant_cocompiled_with_mobilenet_v1_0.25_128_quant_edgetpu.tflite"
DEADLINE_S = 30.0


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Control:
    return make_control(tmp_path, monkeypatch)


class Runner:
    """One interpreter on one delegate, fed a fixed random image."""

    def __init__(self, model: Path, delegate: Any | None) -> None:
        delegates = [delegate] if delegate is not None else []
        self.interpreter = tflite.Interpreter(str(model), experimental_delegates=delegates)
        self.interpreter.allocate_tensors()
        detail = self.interpreter.get_input_details()[0]
        rng = np.random.default_rng(7)
        self.image = rng.integers(0, 256, size=detail["shape"], dtype=np.uint8)
        self.interpreter.set_tensor(detail["index"], self.image)

    def invoke(self) -> np.ndarray[Any, Any]:
        self.interpreter.invoke()
        out = self.interpreter.get_output_details()[0]["index"]
        return np.array(self.interpreter.get_tensor(out))

    def expected(self, out: np.ndarray[Any, Any]) -> bytes:
        return expected_outputs([self.image.tobytes()], out.nbytes)


def delegate(fake_lib: Path, device: str) -> Any:
    return tflite.load_delegate(str(fake_lib), {"device": device})


def test_lists_accelerators_in_libedgetpu_order(fake_lib: Path, bed: Accelerators) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-3", state="dfu")
    bed.add_pci(0, "0000:03:00.0")
    bed.add_usb("1-4")
    bed._tb.add_device(
        "usb", "3-1", None, {"idVendor": "046d", "idProduct": "c52b"}, {"DEVTYPE": "usb_device"}
    )

    refs = list_devices(str(fake_lib))

    assert [(r.type, r.path) for r in refs[:1]] == [("usb", "/sys/bus/usb/devices/2-3")]
    assert sorted(r.path for r in refs[1:3]) == [
        "/sys/bus/usb/devices/1-4",
        "/sys/bus/usb/devices/2-1",
    ]
    assert [(r.type, r.path) for r in refs[3:]] == [("pci", "/dev/apex_0")]


def test_passthrough_gives_real_cpu_outputs(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    cpu = Runner(models_dir / CPU_MODEL, None).invoke()

    runner = Runner(models_dir / CPU_MODEL, delegate(fake_lib, "usb:0"))

    assert np.array_equal(runner.invoke(), cpu)
    assert lib.created() == 1
    assert lib.last_device() == "/sys/bus/usb/devices/2-1"
    assert lib.invokes() == 0  # nothing was claimed: the CPU kernels ran


@pytest.mark.parametrize("first_state", ["ready", "dfu"])
def test_usb_index_binds_the_listed_port(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control, first_state: str
) -> None:
    bed.add_usb("2-3.1", state=first_state)
    bed.add_usb("2-3.2.1")
    bed.add_usb("1-2")
    bed.add_pci(0, "0000:03:00.0")
    usb = [r.path for r in list_devices(str(fake_lib)) if r.type == "usb"]
    assert len(usb) == 3

    for index, path in enumerate(usb):
        assert lib.delegate_device(delegate(fake_lib, f"usb:{index}")) == path
    assert lib.delegate_device(delegate(fake_lib, "pci:0")) == "/dev/apex_0"
    assert lib.delegate_device(delegate(fake_lib, ":3")) == "/dev/apex_0"
    # no index: any device, PCIe before USB (edgetpu_manager_direct.cc, ExtendRequestDeviceType)
    assert lib.delegate_device(delegate(fake_lib, "")) == "/dev/apex_0"
    assert lib.delegate_device(delegate(fake_lib, "usb")) == usb[0]
    if first_state == "dfu":
        assert usb[0].endswith("/2-3.1")


@pytest.mark.parametrize("device", ["usb:2", "pci", "pci:0", ":2", "usb:x", "bogus"])
def test_unknown_device_is_refused_without_a_reason(
    fake_lib: Path, bed: Accelerators, control: Control, device: str
) -> None:
    """Like libedgetpu's plugin: NULL, and nothing through the error callback."""
    bed.add_usb("2-1")
    bed.add_usb("2-2")

    with pytest.raises(ValueError) as info:
        delegate(fake_lib, device)
    assert str(info.value).strip() == f"Failed to load delegate from {fake_lib}"


def test_fail_open_refuses_that_device_only(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    usb = [r.name for r in list_devices(str(fake_lib))]
    control.set(fail_open=[usb[1]])

    with pytest.raises(ValueError, match="Failed to load delegate"):
        delegate(fake_lib, "usb:1")
    assert lib.delegate_device(delegate(fake_lib, "usb:0")).endswith(usb[0])

    control.set(fail_open="*")
    with pytest.raises(ValueError, match="Failed to load delegate"):
        delegate(fake_lib, "usb:0")

    control.set(fail_open=None)
    assert lib.delegate_device(delegate(fake_lib, "usb:1")).endswith(usb[1])


def test_simulate_runs_an_edgetpu_model(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    control.set(mode="simulate", invoke_ms=1)
    runner = Runner(models_dir / TPU_MODEL, delegate(fake_lib, "usb:0"))

    out = runner.invoke()

    assert out.shape == (1, 1001)
    assert out.tobytes() == runner.expected(out)
    assert lib.invokes("2-1") == 1
    runner.invoke()
    assert lib.invokes("2-1") == 2


def test_edgetpu_model_without_simulation_is_unresolved(
    fake_lib: Path, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    """Passthrough cannot run an Edge TPU model, exactly like a CPU-only runtime."""
    bed.add_usb("2-1")

    with pytest.raises(RuntimeError, match="edgetpu-custom-op"):
        Runner(models_dir / TPU_MODEL, delegate(fake_lib, "usb:0"))


def test_simulate_claims_a_cpu_model_too(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    control.set(mode="simulate", invoke_ms=0)
    runner = Runner(models_dir / CPU_MODEL, delegate(fake_lib, "usb:0"))

    out = runner.invoke()

    assert out.tobytes() == runner.expected(out)
    assert lib.invokes("2-1") == 1


def test_caching_tokens_come_from_the_compiled_package(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    control.set(mode="simulate", invoke_ms=0)
    tokens = {}
    for name in (TPU_MODEL, TPU_MODEL_B, CO_A, CO_B, CPU_MODEL, CPU_MODEL_B):
        Runner(models_dir / name, delegate(fake_lib, "usb:0")).invoke()
        tokens[name] = lib.device_token("2-1")

    assert tokens[CO_A] == tokens[CO_B] == 0xE2C366FD5D62FA6B  # read by edgetpu_compiler's tools
    assert tokens[TPU_MODEL] == 0x6D146C3F97D6648C
    assert tokens[TPU_MODEL_B] == 0x8EBC2700DE21D6AA
    assert tokens[CPU_MODEL] != tokens[CPU_MODEL_B]
    assert len(set(tokens.values())) == 5


def test_swap_penalty_when_the_token_changes(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    control.set(mode="simulate", invoke_ms=0, swap_ms=60)
    d = delegate(fake_lib, "usb:0")
    a, b = Runner(models_dir / TPU_MODEL, d), Runner(models_dir / TPU_MODEL_B, d)
    co_a, co_b = Runner(models_dir / CO_A, d), Runner(models_dir / CO_B, d)

    def timed(runner: Runner) -> float:
        start = time.monotonic()
        runner.invoke()
        return time.monotonic() - start

    assert timed(a) >= 0.06  # first load on the device
    a.invoke()
    assert lib.swaps("2-1") == 1
    assert timed(b) >= 0.06
    assert timed(a) >= 0.06
    assert lib.swaps("2-1") == 3
    co_a.invoke()
    co_b.invoke()
    co_a.invoke()
    assert lib.swaps("2-1") == 4  # the co-compiled pair stays cached together


def test_fail_invoke_errors_until_cleared(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    control.set(mode="simulate", invoke_ms=0)
    d0, d1 = delegate(fake_lib, "usb:0"), delegate(fake_lib, "usb:1")
    broken, healthy = lib.delegate_device(d0), lib.delegate_device(d1)
    r0, r1 = Runner(models_dir / TPU_MODEL, d0), Runner(models_dir / TPU_MODEL, d1)

    control.set(fail_invoke=[Path(broken).name])

    with pytest.raises(RuntimeError, match="failed to execute"):
        r0.invoke()
    r1.invoke()
    assert lib.invokes(Path(healthy).name) == 1

    control.set(fail_invoke=None)
    out = r0.invoke()
    assert out.tobytes() == r0.expected(out)


def test_fail_prepare_fails_interpreter_creation(
    fake_lib: Path, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    control.set(mode="simulate", fail_prepare="2-1")

    with pytest.raises(RuntimeError):
        Runner(models_dir / TPU_MODEL, delegate(fake_lib, "usb:0"))


def test_hang_blocks_invoke_until_released(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    control.set(mode="simulate", invoke_ms=0, hang="2-1")
    runner = Runner(models_dir / TPU_MODEL, delegate(fake_lib, "usb:0"))
    results: list[np.ndarray[Any, Any]] = []
    worker = threading.Thread(target=lambda: results.append(runner.invoke()), daemon=True)

    worker.start()
    wait_for(lambda: lib.hanging("2-1") == 1, DEADLINE_S, "the invoke to hang")
    assert worker.is_alive() and not results

    control.set(hang=None)
    worker.join(DEADLINE_S)
    assert not worker.is_alive(), "invoke still blocked after the hang was released"
    assert results[0].tobytes() == runner.expected(results[0])
    assert lib.hanging("2-1") == 0


def test_concurrent_invokes_on_two_devices(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    control.set(mode="simulate", invoke_ms=1, swap_ms=1)
    runners = [
        Runner(models_dir / model, delegate(fake_lib, f"usb:{i % 2}"))
        for i, model in enumerate((TPU_MODEL, TPU_MODEL_B, CO_A, CO_B))
    ]
    errors: list[BaseException] = []

    def loop(runner: Runner) -> None:
        try:
            for _ in range(25):
                out = runner.invoke()
                assert out.tobytes() == runner.expected(out)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)

    assert not errors
    assert lib.invokes("2-1") == lib.invokes("2-2") == 50


def test_create_destroy_loop_does_not_leak(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    bed.add_usb("2-1")
    raw = ctypes.CDLL(str(fake_lib))
    raw.tflite_plugin_create_delegate.restype = ctypes.c_void_p
    raw.tflite_plugin_create_delegate.argtypes = [
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.c_size_t,
        ctypes.c_void_p,
    ]
    raw.tflite_plugin_destroy_delegate.argtypes = [ctypes.c_void_p]
    keys = (ctypes.c_char_p * 1)(b"device")
    values = (ctypes.c_char_p * 1)(b"usb:0")
    raw.tflite_plugin_destroy_delegate(None)  # must accept NULL

    def cycle(n: int) -> None:
        for _ in range(n):
            handle = raw.tflite_plugin_create_delegate(keys, values, 1, None)
            assert handle
            raw.tflite_plugin_destroy_delegate(handle)

    cycle(2000)  # warm the allocator
    before = _rss_kib()
    cycle(20000)
    grown = _rss_kib() - before

    assert lib.created() == lib.destroyed() == 22000
    assert grown < 2048, f"RSS grew {grown} KiB over 20000 create/destroy cycles"


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


# -- harsh behaviour: what the real libedgetpu does to the process that runs it ------------------

# A child process that opens Edge TPUs by path (edgetpud.edgetpu_c, edgetpu_create_delegate) and
# invokes an Edge TPU model on them in turn, printing "ok <dev> <n>" after each invoke. It runs
# under the test's testbed and control file (inherited environment).
CHILD = r"""
import sys, time
import numpy as np
import tflite_runtime.interpreter as tflite
from edgetpud import edgetpu_c

lib, model, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
runners = []
for name in sys.argv[4:]:
    ref = next(r for r in edgetpu_c.list_devices(lib) if r.name == name)
    d = edgetpu_c.create_delegate(lib, ref)
    assert d is not None, f"could not open {name}"
    it = tflite.Interpreter(model, experimental_delegates=[d])
    it.allocate_tensors()
    runners.append((name, it, d))
print("opened", flush=True)
done = {}
for i in range(count):
    name, it, _ = runners[i % len(runners)]
    it.invoke()
    done[name] = done.get(name, 0) + 1
    print("ok", name, done[name], flush=True)
"""


def child(
    control: Control, fake_lib: Path, model: Path, count: int, *devices: str
) -> subprocess.Popen[str]:
    script = control.path.parent / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen(
        [sys.executable, str(script), str(fake_lib), str(model), str(count), *devices],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],  # edgetpud importable
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, list[str], str]:
    out, err = proc.communicate(timeout=DEADLINE_S)
    return proc.returncode, out.splitlines(), err


def test_an_injected_usb_error_aborts_the_process_at_the_nth_invoke(
    fake_lib: Path, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    control.set(mode="simulate", invoke_ms=1, abort_invoke="2-1", abort_after=5)

    proc = child(control, fake_lib, models_dir / TPU_MODEL, 100, "2-2", "2-1")
    code, lines, err = finish(proc)

    assert code == -signal.SIGABRT, (code, err)
    # libedgetpu's LOG(FATAL) line (usb_driver.cc, HandleQueuedBulkIn), then abort()
    assert (
        "F driver/usb/usb_driver.cc:1148] HandleQueuedBulkIn transfer in failed. "
        "Unknown: USB transfer error 1 [LibUsbDataInCallback]"
    ) in err
    assert [x for x in lines if x.startswith("ok 2-1")][-1] == "ok 2-1 5"  # the 6th aborted
    assert lines[-1] == "ok 2-2 6"  # the other device ran until the process died with it
    assert control.events() == [("abort_invoke", "2-1", proc.pid)]


def test_once_fires_a_fault_in_one_process_only_until_rearmed(
    fake_lib: Path, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    control.set(mode="simulate", invoke_ms=0, abort_invoke="2-1", once=1)

    first = finish(child(control, fake_lib, models_dir / TPU_MODEL, 10, "2-1"))
    second = finish(child(control, fake_lib, models_dir / TPU_MODEL, 10, "2-1"))
    control.rearm()
    third = finish(child(control, fake_lib, models_dir / TPU_MODEL, 10, "2-1"))

    assert first[0] == -signal.SIGABRT and first[1] == ["opened"]
    assert control.fired("abort_invoke", "2-1")
    assert second[0] == 0 and second[1][-1] == "ok 2-1 10"  # the restarted process is fine
    assert third[0] == -signal.SIGABRT
    assert [e[0] for e in control.events()] == ["abort_invoke", "abort_invoke"]


@pytest.mark.parametrize("unplug", ["abort", "ignore"])
def test_an_accelerator_unplugged_during_an_invoke(
    fake_lib: Path,
    bed: Accelerators,
    control: Control,
    models_dir: Path,
    unplug: str,
) -> None:
    bed.add_usb("2-1")
    control.set(mode="simulate", invoke_ms=100, unplug=unplug)
    proc = child(control, fake_lib, models_dir / TPU_MODEL, 20, "2-1")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "opened"
    assert proc.stdout.readline().strip() == "ok 2-1 1"

    bed.remove("2-1")  # mid-way through the next 100 ms invoke, or the one after
    code, lines, err = finish(proc)

    if unplug == "abort":  # libedgetpu: the pending transfer fails with NO_DEVICE, LOG(FATAL)
        assert code == -signal.SIGABRT, (code, err)
        assert "transfer in failed. Not found: USB transfer error 5" in err
        assert len(lines) <= 1, lines  # at most the invoke that ended as the device went
        assert control.events() == [("unplug_abort", "2-1", proc.pid)]
    else:  # polite, for tests whose daemon still runs the runtime itself
        assert code == 0, err
        assert lines[-1] == "ok 2-1 20"


def test_a_wedged_device_blocks_every_invoke_on_its_context_until_the_process_dies(
    fake_lib: Path, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    control.set(mode="simulate", invoke_ms=1, wedge="2-1", once=1)
    proc = child(control, fake_lib, models_dir / TPU_MODEL, 10, "2-1")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "opened"
    wait_for(lambda: control.events() == [("wedge", "2-1", proc.pid)], DEADLINE_S, "the wedge")

    control.set(wedge=None)  # no way back from a wedge but the death of the process
    time.sleep(0.5)
    assert proc.poll() is None, "a wedged invoke returned"
    proc.kill()
    code, lines, _ = finish(proc)
    assert code == -signal.SIGKILL and lines == []

    # the dead process's hold on the device is gone: a new one opens it and runs
    code, lines, err = finish(child(control, fake_lib, models_dir / TPU_MODEL, 3, "2-1"))
    assert code == 0 and lines[-1] == "ok 2-1 3", err


def test_a_device_held_by_another_process_is_refused_without_a_reason(
    fake_lib: Path, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    bed.add_usb("2-1")
    control.set(mode="simulate", invoke_ms=1, wedge="2-1")  # the holder stays inside an invoke
    holder = child(control, fake_lib, models_dir / TPU_MODEL, 1, "2-1")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "opened"

        with pytest.raises(ValueError) as info:
            delegate(fake_lib, "usb:0")
        assert str(info.value).strip() == f"Failed to load delegate from {fake_lib}"
    finally:
        holder.kill()
        holder.communicate(timeout=DEADLINE_S)
    assert delegate(fake_lib, "usb:0") is not None  # free again once the holder died


def test_one_context_per_path_and_the_first_options_win(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    first = tflite.load_delegate(str(fake_lib), {"device": "usb:0", "Performance": "Max"})
    second = tflite.load_delegate(str(fake_lib), {"device": "usb:0", "Performance": "Low"})
    path = lib.delegate_device(first)
    name = Path(path).name

    assert lib.delegate_device(second) == path
    assert lib.contexts_opened() == 1 and lib.context_refs(name) == 2
    assert lib.context_options(name) == "device=usb:0;Performance=Max"
    # "usb" with no index hands out the open context, though another accelerator is free
    assert lib.delegate_device(delegate(fake_lib, "usb")) == path

    del first, second
    assert lib.context_refs(name) == 0  # the last delegate closed the device
    third = tflite.load_delegate(str(fake_lib), {"device": "usb:0", "Performance": "Low"})
    assert lib.context_options(name) == "device=usb:0;Performance=Low"
    assert lib.contexts_opened() == 2
    del third


def test_an_index_taken_during_a_firmware_load_names_another_device_but_a_path_does_not(
    fake_lib: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    """The issue's swap: 2-2 drops off the bus for its firmware load, a worker for 2-1 looks up
    its index (usb:0), 2-2 comes back ready and is listed first: usb:0 is now 2-2."""
    bed.add_usb("2-1")
    bed.add_usb("2-2", state="dfu")
    bed.remove("2-2")  # the load's re-enumeration gap
    index = [r.name for r in list_devices(str(fake_lib)) if r.type == "usb"].index("2-1")
    bed.add_usb("2-2")  # back as 18d1:9302

    assert lib.delegate_device(delegate(fake_lib, f"usb:{index}")).endswith("/2-2")
    ref = next(r for r in list_devices(str(fake_lib)) if r.name == "2-1")
    by_path = create_delegate(str(fake_lib), ref)
    assert by_path is not None
    assert lib.delegate_device_pointer(by_path._get_native_delegate_pointer()).endswith("/2-1")
    by_path.close()


def test_create_delegate_by_path_refuses_an_unlisted_path(
    fake_lib: Path, bed: Accelerators, control: Control
) -> None:
    bed.add_usb("2-1")
    gone = EdgeTpuRef("usb", "/sys/bus/usb/devices/2-9")
    assert create_delegate(str(fake_lib), gone) is None
    assert create_delegate(str(fake_lib), EdgeTpuRef("pci", "/sys/bus/usb/devices/2-1")) is None


def test_version_has_libedgetpus_format(fake_lib: Path) -> None:
    assert re.fullmatch(r"BuildLabel\(.+\), RuntimeVersion\(\d+\)", library_version(str(fake_lib)))


def test_a_context_opened_in_firmware_download_mode_follows_the_load_once(
    fake_lib: Path, bed: Accelerators, control: Control, models_dir: Path
) -> None:
    """libedgetpu loads the firmware inside the open and reopens the device when it comes
    back (usb_driver.cc, PrepareUsbDevice); the fake lets the test's load stand for that, once:
    a later unplug is an unplug."""
    bed.add_usb("2-1", state="dfu")
    control.set(mode="simulate", invoke_ms=50)
    proc = child(control, fake_lib, models_dir / TPU_MODEL, 100000, "2-1")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "opened"
    assert proc.stdout.readline().strip() == "ok 2-1 1"

    bed.load_firmware("2-1")  # remove, then back as 18d1:9302 on the same port
    seen = [proc.stdout.readline().strip() for _ in range(5)]
    assert seen[-1].startswith("ok 2-1 "), seen
    assert proc.poll() is None

    bed.remove("2-1")
    code, _, err = finish(proc)
    assert code == -signal.SIGABRT and "USB transfer error 5" in err
    assert control.events() == [("unplug_abort", "2-1", proc.pid)]
