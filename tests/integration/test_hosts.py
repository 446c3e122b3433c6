"""Device hosts (edgetpud/hosts): the TFLite runtime in a child process per device.

Real hosts (`python -m edgetpud.hosts`), the real runtime with real Coral models on the
CPU, and simulated Edge TPUs through the fake libedgetpu for what the CPU cannot show.
Host deaths are real signals to the real process (SIGKILL, SIGABRT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from edgetpud.errors import ModelError
from edgetpud.hosts import HostFailed, HostLost, HostPool
from edgetpud.hosts.pool import FAILED_HOLD_S
from edgetpud.messages import Request
from edgetpud.runtime import DeviceUnavailable, InvokeError, open_session
from edgetpud.workers import ModelQueue, Worker
from tests.support.fakelib import Accelerators, Control, FakeLib, make_control
from tests.support.polling import wait_for
from tests.support.workers import Collector, lanes_alive

CPU_MODEL = "mobilenet_v1_0.25_128_quant.tflite"
EDGETPU_MODEL = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"


def children() -> set[int]:
    """Pids of this process's living children (/proc), zombies excluded."""
    me = os.getpid()
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == me and fields[0] != "Z":
            out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def pool() -> Iterator[HostPool]:
    hosts = HostPool()
    try:
        yield hosts
    finally:
        hosts.close()


def test_a_cpu_host_gives_the_same_outputs_as_the_runtime_in_process(
    models_dir: Path, pool: HostPool
) -> None:
    local = open_session(models_dir / CPU_MODEL, "cpu", cpu_threads=1)
    hosted = pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1)
    rng = np.random.default_rng(7)
    spec = local.info.inputs[0]
    try:
        for _ in range(3):
            x = rng.integers(0, 255, spec.shape, dtype=np.uint8)
            (want,) = local.invoke([x])
            (got,) = hosted.invoke([x])
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype and got.shape == want.shape
        assert hosted.pid != os.getpid() and alive(hosted.pid)
    finally:
        local.close()
        hosted.close()


def test_errors_in_the_host_come_back_as_the_same_errors(models_dir: Path, pool: HostPool) -> None:
    with pytest.raises(ModelError) as in_process:
        open_session(models_dir / EDGETPU_MODEL, "cpu")
    with pytest.raises(ModelError) as hosted:
        pool.open_session("cpu", models_dir / EDGETPU_MODEL)
    assert type(hosted.value) is type(in_process.value)
    assert str(hosted.value) == str(in_process.value)
    session = pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1)
    with pytest.raises(ModelError, match="wants uint8"):  # checked in the daemon, nothing sent
        session.invoke([np.zeros((1, 2), dtype=np.float64)])
    session.close()


def test_a_killed_host_raises_host_lost_with_why_and_the_next_open_gets_a_new_host(
    models_dir: Path, pool: HostPool
) -> None:
    session = pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1)
    first = session.pid
    os.kill(first, signal.SIGABRT)
    spec = session.info.inputs[0]
    with pytest.raises(HostLost) as lost:
        session.invoke([np.zeros(spec.shape, dtype=spec.dtype)])
    assert lost.value.reason.startswith("host for cpu aborted")
    session.close()
    again = pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1)
    assert again.pid != first
    (status,) = pool.snapshot()
    assert (status.device, status.pid, status.state, status.restarts, status.deaths) == (
        "cpu",
        again.pid,
        "running",
        1,
        1,
    )
    assert status.last_exit.startswith("aborted")
    again.close()


def test_a_host_that_keeps_dying_is_given_up_with_the_reason(
    models_dir: Path, pool: HostPool
) -> None:
    pids = []
    with pytest.raises(HostFailed) as failed:  # the third open is what fails
        for n in range(1, 5):
            session = pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1)
            pids.append(session.pid)
            os.kill(session.pid, signal.SIGKILL)
            wait_for(lambda: pool.snapshot()[0].deaths == n, what="its death noted")  # noqa: B023
            session.close()
    assert len(pids) == 3
    assert str(failed.value).startswith("host for cpu died 3 times in 60 s, the last: was killed")
    # every lane that was waiting to reopen is told, not only the first one to ask
    with pytest.raises(HostFailed):
        pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1)
    # the device is tried afresh afterwards (the service's quarantine decides when)
    time.sleep(FAILED_HOLD_S)
    session = pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1)
    assert session.pid not in pids
    session.close()


def test_deaths_before_a_replug_do_not_count_towards_giving_up(
    models_dir: Path, pool: HostPool
) -> None:
    """libedgetpu aborts a host whose device is pulled during an invoke: those deaths are
    the old device's. After the replug, the new device gets the full allowance again."""

    def open_and_kill(n: int) -> int:
        session = pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1)
        os.kill(session.pid, signal.SIGKILL)
        wait_for(lambda: pool.snapshot()[0].deaths == n, what="its death noted")
        session.close()
        return session.pid

    open_and_kill(1)
    open_and_kill(2)
    pool.replugged("cpu")
    open_and_kill(3)  # without the replug, the third death gives the device up
    session = pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1)
    assert pool.snapshot()[0].state == "running"
    session.close()


def test_a_host_dies_with_the_daemon(models_dir: Path, tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from edgetpud.hosts import HostPool\n"
        "pool = HostPool()\n"
        f"s = pool.open_session('cpu', {str(models_dir / CPU_MODEL)!r}, cpu_threads=1)\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    daemon = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    try:
        assert daemon.stdout is not None
        host = int(daemon.stdout.readline())
        assert alive(host)
        daemon.kill()
        daemon.wait(10)
        wait_for(lambda: not alive(host), timeout=5, what="the host to die with its daemon")
    finally:
        daemon.kill()
        daemon.wait(10)


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def test_nothing_is_left_behind(models_dir: Path) -> None:
    def cycle() -> None:
        pool = HostPool()
        sessions = [
            pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1) for _ in range(3)
        ]
        os.kill(sessions[0].pid, signal.SIGKILL)  # a death on the way must not leak either
        for session in sessions:
            session.close()
        session = pool.open_session("cpu", models_dir / CPU_MODEL, cpu_threads=1)
        session.close()
        pool.close()

    cycle()  # the first one may open what a process opens once (an import's files, say)
    fds = set(os.listdir("/proc/self/fd"))
    shm = shm_entries()
    before = children()
    cycle()
    wait_for(lambda: children() == before, timeout=10, what="no host process left")
    wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("host")],
        timeout=10,
        what="no host thread left",
    )
    left = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in set(os.listdir("/proc/self/fd")) - fds}
    assert not left, left
    assert shm_entries() <= shm


# -- workers over hosts --------------------------------------------------------------------------


def tensor_req(value: int) -> Request:
    return Request(model="m", payload=value, kind="array")


def tensor(req: Request, info: Any) -> list[NDArray[Any]]:
    return [np.full(info.inputs[0].shape, req.payload, dtype=np.uint8)]


def checksum(outputs: list[NDArray[Any]], req: Request, info: Any) -> Any:
    return int(outputs[0].sum())


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Control:
    return make_control(tmp_path, monkeypatch, mode="simulate", invoke_ms=20)


def hosted_worker(
    pool: HostPool, models_dir: Path, lib: FakeLib, q: ModelQueue, sink: Collector, *, device: str
) -> Worker:
    return Worker(
        "m",
        device,
        q,
        lambda: pool.open_session(device, models_dir / EDGETPU_MODEL, library=str(lib.path)),
        tensor,
        checksum,
        sink.on_result,
        sink.on_report,
        stall_timeout=60,
        interpreters=3,
    )


def test_a_host_killed_under_load_loses_no_request_and_answers_none_twice(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control, pool: HostPool
) -> None:
    bed.add_usb("2-1")
    q = ModelQueue("m", 500, "block")
    sink = Collector()
    w = hosted_worker(pool, models_dir, lib, q, sink, device="usb:2-1")
    w.start()
    sent = [tensor_req(i % 200) for i in range(150)]
    for r in sent:
        q.put(r)
    wait_for(lambda: len(sink.results) >= 20, what="20 results")
    (host,) = pool.pids()
    wait_for(lambda: w.stats().in_flight, what="a request in flight")
    os.kill(host, signal.SIGKILL)
    wait_for(lambda: len(sink.results) >= 150, what="all 150 answered")
    ids = sink.ids()
    assert all(ids[r.id] == 1 for r in sent)
    assert all(r.ok for r in sink.results), [r.error for r in sink.results if not r.ok][:3]
    assert max(r.request.attempts for r in sink.results) == 1  # the ones in flight
    lost = [r for r in sink.reports if r.kind == "host_lost"]
    assert len(lost) == 1 and "was killed (SIGKILL" in lost[0].error
    assert "usb:2-1" in lost[0].error
    (status,) = pool.snapshot()
    assert status.restarts == 1 and status.pid not in (0, host)
    w.stop(time.monotonic() + 30)
    wait_for(lambda: not lanes_alive(), what="lanes ended")


def test_a_device_whose_host_keeps_dying_fails_the_worker_with_the_reason(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control, pool: HostPool
) -> None:
    bed.add_usb("2-1")
    q = ModelQueue("m", 500, "block")
    sink = Collector()
    w = hosted_worker(pool, models_dir, lib, q, sink, device="usb:2-1")
    w.start()
    sent = [tensor_req(1) for _ in range(400)]
    for r in sent:
        q.put(r)
    killed: list[int] = []
    while "open_failed" not in sink.kinds():
        pids = pool.pids()
        if pids and pids[0] not in killed and w.stats().in_flight:
            killed.append(pids[0])
            os.kill(pids[0], signal.SIGABRT)
        assert len(killed) <= 3, sink.kinds()
        time.sleep(0.01)
    failed = next(r for r in sink.reports if r.kind == "open_failed")
    assert failed.error.startswith("host for usb:2-1 died 3 times in 60 s, the last: aborted")
    assert isinstance(failed.exc, HostFailed)
    assert w.state == "failed"
    wait_for(lambda: not lanes_alive(), what="lanes ended")
    # nothing lost: every request is answered once or still waiting in the queue
    answered = sink.ids()
    assert all(n == 1 for n in answered.values())
    assert len(answered) + q.depth == len(sent)


def test_a_device_refused_in_the_host_is_an_open_failure_naming_it(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control, pool: HostPool
) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    control.set(fail_open=["2-2"])
    with pytest.raises(DeviceUnavailable) as refused:
        pool.open_session("usb:2-2", models_dir / EDGETPU_MODEL, library=str(lib.path))
    assert refused.value.identity == "usb:2-2" and refused.value.port == "2-2"


def test_an_invoke_error_in_the_host_is_an_invoke_error_and_the_session_carries_on(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control, pool: HostPool
) -> None:
    bed.add_usb("2-1")
    session = pool.open_session("usb:2-1", models_dir / EDGETPU_MODEL, library=str(lib.path))
    spec = session.info.inputs[0]
    x = np.zeros(spec.shape, dtype=spec.dtype)
    control.set(fail_invoke=["2-1"])
    with pytest.raises(InvokeError, match="on usb:2-1 failed"):
        session.invoke([x])
    control.set(fail_invoke=None)
    (out,) = session.invoke([x])
    assert out.shape == tuple(session.info.outputs[0].shape)
    session.close()


def test_recover_kills_the_host_and_resets_the_device_before_reopening(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control
) -> None:
    resets: list[str] = []

    def reset(device: str) -> str:
        assert not alive(session.pid), "reset while the wedged host still holds the device"
        resets.append(device)
        return "reset"

    pool = HostPool(reset=reset)
    try:
        bed.add_usb("2-1")
        control.set(hang=["2-1"])
        session = pool.open_session("usb:2-1", models_dir / EDGETPU_MODEL, library=str(lib.path))
        spec = session.info.inputs[0]
        errors: list[BaseException] = []

        def invoke() -> None:
            try:
                session.invoke([np.zeros(spec.shape, dtype=spec.dtype)])
            except BaseException as exc:
                errors.append(exc)

        stuck = threading.Thread(target=invoke)
        stuck.start()
        time.sleep(0.3)
        assert stuck.is_alive()  # wedged
        assert pool.recover("usb:2-1", "an invoke ran past stall_timeout")
        stuck.join(10)
        assert not stuck.is_alive()
        (lost,) = errors
        assert isinstance(lost, HostLost) and lost.sent
        assert "killed by edgetpud: an invoke ran past stall_timeout" in lost.reason
        session.close()
        control.set(hang=None)
        again = pool.open_session("usb:2-1", models_dir / EDGETPU_MODEL, library=str(lib.path))
        assert resets == ["usb:2-1"]  # once the wedged host was gone, before the new one
        assert again.pid != session.pid
        (out,) = again.invoke([np.zeros(spec.shape, dtype=spec.dtype)])
        assert out.shape == tuple(again.info.outputs[0].shape)
        again.close()
    finally:
        control.set(hang=None)
        pool.close()


def test_closing_the_last_session_while_another_opens_keeps_the_host_for_it(
    models_dir: Path, lib: FakeLib, bed: Accelerators, control: Control, pool: HostPool
) -> None:
    """Two models share an accelerator; one moves away (its last session closes) while the
    other's lane is opening an interpreter in the same host: that host must stay for it,
    not close under the open (the open was lost, and the next one started a second host
    while the first still held the device: "in use by another process", our own)."""
    bed.add_usb("2-1")
    first = pool.open_session("usb:2-1", models_dir / EDGETPU_MODEL, library=str(lib.path))
    control.set(open_ms=1500)  # the next create takes 1.5 s, like a firmware load
    opened: list[Any] = []
    failed: list[BaseException] = []

    def open_second() -> None:
        try:
            opened.append(
                pool.open_session("usb:2-1", models_dir / EDGETPU_MODEL, library=str(lib.path))
            )
        except BaseException as exc:  # reported by the assertion below
            failed.append(exc)

    opener = threading.Thread(target=open_second)
    opener.start()
    wait_for(lambda: pool.snapshot()[0].state == "running", 10, "the host")
    time.sleep(0.3)  # the second open is in the host's create now
    first.close()  # the host's last *open* session
    opener.join(30)
    assert not failed, failed
    (second,) = opened
    try:
        time.sleep(1.0)  # long enough for a host closed under the open to have gone
        assert second.pid == first.pid and alive(second.pid), "the host closed under the open"
        spec = second.info.inputs[0]
        second.invoke([np.zeros(spec.shape, dtype=spec.dtype)])
    finally:
        second.close()
