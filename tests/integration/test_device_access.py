"""edgetpud.devices.access and .reset over real files, real processes and real ioctls.

Who holds a device node is read from /proc/*/fd of real child processes; who may open it is
checked for a real unprivileged user (nobody) when the tests run as root; the USB reset is a
real USBDEVFS_RESET ioctl, refused by the kernel on nodes that are not USB devices.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgetpud.devices.access import (
    DeviceBusy,
    DeviceNotPermitted,
    check_permission,
    diagnose,
    holders,
    usb_node,
)
from edgetpud.devices.reset import USBDEVFS_RESET, ResetFailed, reset_identity, reset_usb_device
from edgetpud.errors import DeviceError
from tests.support.fakelib import Accelerators, held_elsewhere

HOLD = "import sys, time\nf = open(sys.argv[1], 'rb')\nprint('open', flush=True)\ntime.sleep(600)\n"


@contextmanager
def holding(path: str | Path) -> Iterator[subprocess.Popen[str]]:
    """A child process with `path` open until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        yield proc
    finally:
        proc.kill()
        proc.wait(30)


def test_a_child_holding_a_file_is_found_with_its_name(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.write_bytes(b"")
    assert holders(str(node)) == ()

    with holding(node) as proc:
        found = holders(str(node))
        assert [h.pid for h in found] == [proc.pid]
        assert found[0].comm.startswith("python")
        assert str(found[0]) == f"pid {proc.pid} ({found[0].comm})"

    assert holders(str(node)) == ()


def test_a_character_device_is_matched_by_device_number(tmp_path: Path) -> None:
    """/dev/null opened through another path (a symlink here; a bind mount in a container)."""
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    with holding(link) as proc:
        assert proc.pid in [h.pid for h in holders("/dev/null")]


def test_a_missing_node_has_no_holders(tmp_path: Path) -> None:
    assert holders(str(tmp_path / "gone")) == ()


def _nobody_check(node: Path) -> subprocess.CompletedProcess[str]:
    """check_permission run as user nobody, by Debian's python3 (the venv's lives in /root)."""
    code = (
        "import sys\n"
        "from edgetpud.devices.access import check_permission, DeviceNotPermitted\n"
        "try:\n"
        "    check_permission('usb:2-1', sys.argv[1])\n"
        "    print('permitted')\n"
        "except DeviceNotPermitted as exc:\n"
        "    print(exc)\n"
    )
    src = Path(__file__).parents[2]
    return subprocess.run(
        ["/usr/bin/python3", "-c", code, str(node)],
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder user nobody can reach (pytest's tmp_path sits in root's private folder)."""
    path = Path(tempfile.mkdtemp(prefix="edgetpud-access."))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to user nobody needs root")
def test_a_node_the_user_may_not_open_is_not_permitted_naming_the_fix(public_dir: Path) -> None:
    node = public_dir / "003"
    node.write_bytes(b"")
    node.chmod(0o660)  # root:root rw-rw----, like a node without edgetpud's udev rule

    done = _nobody_check(node)
    assert done.returncode == 0, done.stderr
    said = done.stdout.strip()
    assert said.startswith(f"Edge TPU usb:2-1: user nobody may not read and write {node}")
    assert "-rw-rw---- root:root" in said
    assert "usermod -aG plugdev nobody" in said and "60-edgetpud.rules" in said

    node.chmod(0o666)
    assert _nobody_check(node).stdout.strip() == "permitted"

    public_dir.chmod(0o700)  # the node exists, but nobody cannot reach it
    assert "may not read and write" in _nobody_check(node).stdout


def test_permission_check_passes_for_a_node_we_may_open(tmp_path: Path) -> None:
    node = tmp_path / "003"
    node.write_bytes(b"")
    check_permission("usb:2-1", str(node))  # no error
    check_permission("usb:2-1", str(tmp_path / "missing"))  # no node: not a permission problem


def test_busy_and_not_permitted_are_device_errors_but_not_unavailable() -> None:
    from edgetpud.runtime import DeviceUnavailable

    for cls in (DeviceBusy, DeviceNotPermitted):
        assert issubclass(cls, DeviceError) and not issubclass(cls, DeviceUnavailable)


def test_usb_node_comes_from_sysfs_busnum_and_devnum(tmp_path: Path) -> None:
    port = tmp_path / "2-3.1"
    port.mkdir()
    (port / "busnum").write_text("2\n")
    (port / "devnum").write_text("17\n")
    assert usb_node("2-3.1", str(tmp_path)) == "/dev/bus/usb/002/017"
    assert usb_node("2-9", str(tmp_path)) == ""


def test_diagnose_names_the_process_holding_an_accelerator(
    fake_lib: Path, bed: Accelerators
) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    assert diagnose("usb:2-1", "usb", "2-1") is None

    with held_elsewhere(fake_lib, "2-1") as holder:
        busy = diagnose("usb:2-1", "usb", "2-1")
        assert isinstance(busy, DeviceBusy)
        assert busy.node == bed.nodes["2-1"]
        assert [h.pid for h in busy.holders] == [holder.pid]
        assert diagnose("usb:2-2", "usb", "2-2") is None

    assert diagnose("usb:2-1", "usb", "2-1") is None


def test_reset_needs_a_usb_device_node(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-device"
    plain.write_bytes(b"")
    assert USBDEVFS_RESET == 0x5514  # _IO('U', 20)

    for node in (str(plain), "/dev/null"):
        with pytest.raises(ResetFailed, match="it is not a USB device node") as err:
            reset_usb_device(node)
        assert "Inappropriate ioctl" in str(err.value) and err.value.node == node

    with pytest.raises(ResetFailed, match=r"no such device node.*edgetpud devices"):
        reset_usb_device(str(tmp_path / "002" / "009"))


def test_an_interface_claimed_by_a_process_proc_hides_is_busy_without_a_pid(
    bed: Accelerators,
) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    bed.claim_interface("2-1")

    busy = diagnose("usb:2-1", "usb", "2-1")
    assert isinstance(busy, DeviceBusy) and busy.holders == ()
    assert f"sudo fuser -v {bed.nodes['2-1']}" in str(busy)
    assert "ProtectProc=invisible" in str(busy)
    assert diagnose("usb:2-2", "usb", "2-2") is None


def test_opening_a_claimed_accelerator_is_busy_not_a_bad_port(
    fake_lib: Path, bed: Accelerators, models_dir: Path
) -> None:
    """The fake refuses it as libusb's claim would (LIBUSB_ERROR_BUSY); the runtime says busy."""
    from edgetpud.runtime import open_session

    bed.add_usb("2-1")
    bed.claim_interface("2-1")
    model = models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"

    with pytest.raises(DeviceBusy, match="claimed its USB interface"):
        open_session(model, "usb:2-1", library=str(fake_lib))


def test_a_busy_device_stays_busy_across_the_device_host_boundary(
    fake_lib: Path, bed: Accelerators, models_dir: Path
) -> None:
    """The host opens the device; the daemon gets DeviceBusy back (not DeviceUnavailable),
    with the holder's pid, so it is not learned as a bad port."""
    from edgetpud.hosts import HostPool
    from edgetpud.runtime import DeviceUnavailable

    bed.add_usb("2-1")
    pool = HostPool()
    try:
        with held_elsewhere(fake_lib, "2-1") as holder:
            with pytest.raises(DeviceBusy) as err:
                pool.open_session(
                    "usb:2-1",
                    models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite",
                    library=str(fake_lib),
                )
            assert not isinstance(err.value, DeviceUnavailable)
            assert err.value.pids == [holder.pid]
            assert f"pid {holder.pid}" in str(err.value)
    finally:
        pool.close()


def test_reset_by_identity_finds_the_node_now(bed: Accelerators) -> None:
    """umockdev's preload answers USBDEVFS_RESET on a testbed USB node as the kernel does (0),
    and any other usbdevfs ioctl with ENOTTY: the reset reaches the node the identity names."""
    bed.add_usb("2-1")
    bed.add_usb("2-2")

    done = reset_identity("usb:2-1")
    assert done == (
        f"reset usb:2-1 ({bed.nodes['2-1']}) with USBDEVFS_RESET; it re-enumerates on the same port"
    )

    bed.remove("2-2")
    with pytest.raises(ResetFailed, match="cannot reset usb:2-2: it is not in sysfs"):
        reset_identity("usb:2-2")
    assert reset_identity("pci:0000:03:00.0") is None
    assert reset_identity("cpu") is None
