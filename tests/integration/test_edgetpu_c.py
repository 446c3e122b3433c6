"""edgetpud.edgetpu_c: identity -> delegate device string, through the fake runtime library."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetpud.edgetpu_c import (
    EdgeTpuRef,
    LibraryMissing,
    apex_pci_address,
    delegate_device_string,
    list_devices,
)
from edgetpud.errors import DeviceError
from tests.support.fakelib import Accelerators, Control, FakeLib, accelerators, make_control


@pytest.fixture
def bed() -> Iterator[Accelerators]:
    with accelerators() as testbed:
        yield testbed


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Control:
    return make_control(tmp_path, monkeypatch)


def test_lists_nothing_without_accelerators(fake_lib: Path, bed: Accelerators) -> None:
    assert list_devices(str(fake_lib)) == []


def test_list_devices_returns_typed_refs(fake_lib: Path, bed: Accelerators) -> None:
    bed.add_usb("2-1", state="dfu")
    bed.add_pci(0, "0000:03:00.0")

    assert list_devices(str(fake_lib)) == [
        EdgeTpuRef("usb", "/sys/bus/usb/devices/2-1"),
        EdgeTpuRef("pci", "/dev/apex_0"),
    ]


def test_usb_identity_maps_to_its_index_in_the_library_order(
    fake_lib: Path, bed: Accelerators
) -> None:
    for port in ("2-3.1", "2-3.2.1", "1-2"):
        bed.add_usb(port)
    bed.add_usb("2-4", state="dfu")  # listed first, so it shifts every ready device's index
    bed.add_pci(0, "0000:03:00.0")
    order = [r.name for r in list_devices(str(fake_lib)) if r.type == "usb"]
    assert order[0] == "2-4"

    for port in ("2-3.1", "2-3.2.1", "1-2", "2-4"):
        assert delegate_device_string(f"usb:{port}", str(fake_lib)) == f"usb:{order.index(port)}"


def test_resolved_string_opens_that_physical_port(
    fake_lib: Path, bed: Accelerators, control: Control
) -> None:
    tflite = pytest.importorskip("tflite_runtime.interpreter")
    hooks = FakeLib(fake_lib)
    for port in ("2-3.1", "2-3.2.1", "1-2"):
        bed.add_usb(port)

    for port in ("2-3.1", "2-3.2.1", "1-2"):
        device = delegate_device_string(f"usb:{port}", str(fake_lib))
        d = tflite.load_delegate(str(fake_lib), {"device": device})
        assert hooks.delegate_device(d) == f"/sys/bus/usb/devices/{port}"


def test_pci_identity_by_address_or_unique_id(fake_lib: Path, bed: Accelerators) -> None:
    bed.add_pci(0, "0000:03:00.0")
    bed.add_pci(1, "0000:04:00.0", unique_id="a1b2c3d4")
    bed.add_usb("2-1")
    order = [r.name for r in list_devices(str(fake_lib)) if r.type == "pci"]
    assert apex_pci_address("apex_1") == "0000:04:00.0"

    assert delegate_device_string("pci:0000:03:00.0", str(fake_lib)) == (
        f"pci:{order.index('apex_0')}"
    )
    assert delegate_device_string("pci:0000:04:00.0", str(fake_lib)) == (
        f"pci:{order.index('apex_1')}"
    )
    assert delegate_device_string("pci:a1b2c3d4", str(fake_lib)) == f"pci:{order.index('apex_1')}"


@pytest.mark.parametrize("identity", ["usb:2-9", "pci:0000:09:00.0", "usb:apex_0", "pci:2-1"])
def test_identity_not_listed_is_an_error_never_a_guess(
    fake_lib: Path, bed: Accelerators, identity: str
) -> None:
    bed.add_usb("2-1")
    bed.add_pci(0, "0000:03:00.0")

    with pytest.raises(DeviceError, match=r"not in .* device list") as info:
        delegate_device_string(identity, str(fake_lib))
    assert "usb:2-1" in str(info.value) and "pci:0000:03:00.0" in str(info.value)
    assert "edgetpud devices" in str(info.value)


def test_a_device_gone_since_enumeration_is_not_found(fake_lib: Path, bed: Accelerators) -> None:
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    assert delegate_device_string("usb:2-2", str(fake_lib)).startswith("usb:")

    bed.remove("2-2")

    with pytest.raises(DeviceError, match="usb:2-2 is not in"):
        delegate_device_string("usb:2-2", str(fake_lib))


@pytest.mark.parametrize("identity", ["usb", "pci", "usb:1", "pci:0", ":1", ""])
def test_generic_delegate_strings_pass_through(identity: str) -> None:
    assert delegate_device_string(identity, "libedgetpu-that-is-never-loaded.so.1") == identity


@pytest.mark.parametrize("identity", ["usb:", "cpu:0", "tpu:2-1", "2-1"])
def test_malformed_identity_says_what_to_use(fake_lib: Path, identity: str) -> None:
    with pytest.raises(DeviceError, match=re.escape("usb:2-3.1 or pci:0000:03:00.0")):
        delegate_device_string(identity, str(fake_lib))


def test_missing_library_says_what_to_install(tmp_path: Path) -> None:
    missing = str(tmp_path / "libedgetpu.so.1")

    with pytest.raises(LibraryMissing, match="install libedgetpu1-std") as info:
        delegate_device_string("usb:2-1", missing)
    assert isinstance(info.value, DeviceError) and isinstance(info.value, OSError)


def test_a_library_that_is_not_libedgetpu_is_rejected() -> None:
    with pytest.raises(LibraryMissing, match="no edgetpu_list_devices"):
        list_devices("libm.so.6")
