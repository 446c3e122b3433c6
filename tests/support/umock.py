"""A umockdev testbed driven through ctypes, with builders for Coral hardware.

The test process must run under `umockdev-wrapper` (make test does). Devices
appear at standard sysfs paths (`/sys/bus/usb/devices/2-3.1`, `/sys/class/apex/apex_0`)
for pyudev, for the fake libedgetpu, and for subprocesses started from the test
(they inherit UMOCKDEV_DIR and LD_PRELOAD).

    tb = Testbed()
    root = tb.add_root_hub(2, 5000)
    hub = tb.add_hub(root, 3, 5000, self_powered=True)
    acc = tb.add_accelerator(hub, 1, state="dfu")
    acc = tb.firmware_load(acc)          # now 18d1:9302 on the same port
    tb.unplug(acc)
    tb.close()

Limit: umockdev 0.17 aborts the *sending* process when a listening udev monitor has
`net.unix.max_dgram_qlen` (10 by default) unread events. Keep fewer than that in flight
per listener (wait for the listener's reaction between groups of events; see
EVENT_WINDOW), and close every monitor you stop reading.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

EVENT_WINDOW = 8  # uevents a test may send before waiting for the listener to catch up
READY = ("18d1", "9302")
DFU = ("1a6e", "089a")


def _load(name: str) -> ctypes.CDLL:
    return ctypes.CDLL(name)


_um = _load("libumockdev.so.0")
_go = _load("libgobject-2.0.so.0")
_gl = _load("libglib-2.0.so.0")
_um.umockdev_testbed_new.restype = ctypes.c_void_p
_um.umockdev_in_mock_environment.restype = ctypes.c_int
_um.umockdev_testbed_get_root_dir.restype = ctypes.c_void_p
_um.umockdev_testbed_get_root_dir.argtypes = [ctypes.c_void_p]
_um.umockdev_testbed_add_devicev.restype = ctypes.c_void_p
_um.umockdev_testbed_add_devicev.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_char_p),
    ctypes.POINTER(ctypes.c_char_p),
]
_um.umockdev_testbed_set_attribute.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
]
_um.umockdev_testbed_uevent.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
_um.umockdev_testbed_remove_device.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_go.g_object_unref.argtypes = [ctypes.c_void_p]
_gl.g_free.argtypes = [ctypes.c_void_p]


def in_mock_environment() -> bool:
    """True when umockdev's preload library is active (the process runs under umockdev-wrapper)."""
    return "umockdev" in os.environ.get("LD_PRELOAD", "")


def _take(ptr: int | None) -> str:
    if not ptr:
        raise RuntimeError("umockdev returned NULL (see its warning on stderr)")
    text = ctypes.string_at(ptr).decode()
    _gl.g_free(ptr)
    return text


def _strv(d: Mapping[str, str]) -> ctypes.Array[ctypes.c_char_p]:
    items: list[bytes | None] = [x.encode() for kv in d.items() for x in kv]
    items.append(None)
    return (ctypes.c_char_p * len(items))(*items)


class Testbed:
    """One umockdev testbed; `close()` removes every device and the testbed folder."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self._tb: int | None = _um.umockdev_testbed_new()
        if not _um.umockdev_in_mock_environment():
            self.close()
            raise RuntimeError("run the tests under umockdev-wrapper (make test does)")
        self.root = _take(_um.umockdev_testbed_get_root_dir(self._tb))
        # umockdev set UMOCKDEV_DIR with C setenv; mirror it so subprocesses started with
        # env={**os.environ, ...} see the testbed too
        os.environ["UMOCKDEV_DIR"] = self.root
        self._devnum: dict[int, int] = {}

    # -- low level ----------------------------------------------------------

    def add_device(
        self,
        subsystem: str,
        name: str,
        parent: str | None = None,
        attrs: Mapping[str, str] | None = None,
        props: Mapping[str, str] | None = None,
    ) -> str:
        """Add a device (emits "add"); returns its sysfs path."""
        return _take(
            _um.umockdev_testbed_add_devicev(
                self._tb,
                subsystem.encode(),
                name.encode(),
                parent.encode() if parent else None,
                _strv(attrs or {}),
                _strv(props or {}),
            )
        )

    def set_attribute(self, syspath: str, name: str, value: str) -> None:
        _um.umockdev_testbed_set_attribute(
            self._tb, syspath.encode(), name.encode(), value.encode()
        )

    def write_file(self, syspath: str, relative: str, value: str) -> None:
        """A sysfs file below a device that is not one of its attributes (e.g. a hub port's)."""
        path = Path(self.root + syspath) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")

    def uevent(self, syspath: str, action: str) -> None:
        _um.umockdev_testbed_uevent(self._tb, syspath.encode(), action.encode())

    def remove_device(self, syspath: str) -> None:
        _um.umockdev_testbed_remove_device(self._tb, syspath.encode())

    def add_node(self, devname: str, mode: int = 0o664) -> Path:
        """The device node `devname` ("/dev/bus/usb/002/003"): a plain file in the testbed,
        which umockdev's preload shows at that path as a character device. The fake
        libedgetpu opens and flock()s it while it holds the device (busy for others)."""
        node = Path(self.root + devname)
        node.parent.mkdir(parents=True, exist_ok=True)
        node.touch()
        node.chmod(mode)
        return node

    def node_of(self, syspath: str) -> str:
        """The /dev path of a USB device or apex module added here ("" if it has none)."""
        sysdir = Path(self.root + syspath)
        if sysdir.parent.name != "apex" and (sysdir / "busnum").exists():
            bus = int((sysdir / "busnum").read_text())
            dev = int((sysdir / "devnum").read_text())
            return f"/dev/bus/usb/{bus:03d}/{dev:03d}"
        if sysdir.name.startswith("apex_"):
            return f"/dev/{sysdir.name}"
        return ""

    def close(self) -> None:
        if self._tb is not None:
            _go.g_object_unref(self._tb)
            self._tb = None
            if os.environ.get("UMOCKDEV_DIR") == self.root:
                del os.environ["UMOCKDEV_DIR"]

    # -- Coral hardware -----------------------------------------------------

    def _next_devnum(self, bus: int) -> int:
        self._devnum[bus] = self._devnum.get(bus, 0) + 1
        return self._devnum[bus]

    def _usb_device(
        self,
        name: str,
        parent: str | None,
        ids: tuple[str, str],
        *,
        speed: int,
        bm_attributes: int,
        max_power: str,
        configured: bool = True,
        maxchild: int = 0,
        removable: str = "removable",
        product: str = "",
    ) -> str:
        bus = int(name[3:]) if name.startswith("usb") else int(name.split("-", 1)[0])
        devnum = self._next_devnum(bus)
        devpath = "0" if name.startswith("usb") else name.split("-", 1)[1]
        attrs = {
            "idVendor": ids[0],
            "idProduct": ids[1],
            "speed": str(speed),
            "busnum": str(bus),
            "devnum": str(devnum),
            "devpath": devpath,
            "bMaxPower": max_power,
            "bConfigurationValue": "1" if configured else "",
            "bmAttributes": f"{bm_attributes:x}",
            "maxchild": str(maxchild),
            "removable": removable,
            "product": product,
        }
        props = {
            "DEVTYPE": "usb_device",
            "BUSNUM": f"{bus:03d}",
            "DEVNUM": f"{devnum:03d}",
            "DEVNAME": f"/dev/bus/usb/{bus:03d}/{devnum:03d}",
            "PRODUCT": f"{int(ids[0], 16):x}/{int(ids[1], 16):x}/100",
            "ID_VENDOR_ID": ids[0],
            "ID_MODEL_ID": ids[1],
        }
        path = self.add_device("usb", name, parent, attrs, props)
        self.add_node(props["DEVNAME"])
        return path

    def _hub_ports(self, syspath: str, name: str, maxchild: int) -> None:
        interface = f"{name[3:]}-0:1.0" if name.startswith("usb") else f"{name}:1.0"
        for port in range(1, maxchild + 1):
            self.write_file(syspath, f"{interface}/{name}-port{port}/over_current_count", "0")

    def add_root_hub(self, bus: int, speed: int = 5000, maxchild: int = 4) -> str:
        name = f"usb{bus}"
        product = "0003" if speed >= 5000 else "0002"
        path = self._usb_device(
            name,
            None,
            ("1d6b", product),
            speed=speed,
            bm_attributes=0xE0,
            max_power="0mA",
            maxchild=maxchild,
            product="xHCI Host Controller",
        )
        self._hub_ports(path, name, maxchild)
        return path

    def add_hub(
        self,
        parent: str,
        port: int,
        speed: int = 5000,
        self_powered: bool = True,
        vendor_product: str = "05e3:0626",
        *,
        max_power_ma: int = 100,
        maxchild: int = 4,
        removable: str = "removable",
    ) -> str:
        name = self.child_name(parent, port)
        vendor, product = vendor_product.split(":")
        path = self._usb_device(
            name,
            parent,
            (vendor, product),
            speed=speed,
            bm_attributes=0xE0 if self_powered else 0xA0,
            max_power=f"{max_power_ma}mA",
            maxchild=maxchild,
            removable=removable,
            product="USB3.1 Hub",
        )
        self._hub_ports(path, name, maxchild)
        return path

    def add_accelerator(
        self,
        parent_syspath: str,
        port_path: int | str,
        *,
        state: str = "ready",
        speed: int = 5000,
        configured: bool = True,
    ) -> str:
        """A USB Accelerator; `port_path` is its port number on the parent or its full name."""
        name = (
            port_path if isinstance(port_path, str) else self.child_name(parent_syspath, port_path)
        )
        ids = DFU if state == "dfu" else READY
        return self._usb_device(
            name,
            parent_syspath,
            ids,
            speed=speed,
            bm_attributes=0x80,
            max_power="896mA",
            configured=configured,
            product="" if state == "dfu" else "Coral USB Accelerator",
        )

    def set_over_current(self, accelerator_syspath: str, count: int) -> None:
        """Set the over-current count of the hub port an accelerator is plugged into."""
        parent, name = os.path.split(accelerator_syspath)
        hub = os.path.basename(parent)
        port = name.rsplit(".", 1)[-1] if "." in name else name.split("-", 1)[-1]
        interface = f"{hub[3:]}-0:1.0" if hub.startswith("usb") else f"{hub}:1.0"
        self.write_file(parent, f"{interface}/{hub}-port{port}/over_current_count", str(count))

    def add_apex(
        self,
        index: int,
        pci_address: str,
        temp_mc: int = 45000,
        unique_id: str | None = None,
        *,
        trip_points_mc: tuple[int, int, int] = (85000, 90000, 95000),
    ) -> str:
        """An M.2 / mini-PCIe module: a PCI device 1ac1:089a with class apex device apex_N."""
        pci = self.add_device(
            "pci",
            pci_address,
            None,
            {"vendor": "0x1ac1", "device": "0x089a", "class": "0x0000ff"},
            {"PCI_ID": "1AC1:089A", "PCI_SLOT_NAME": pci_address, "DRIVER": "apex"},
        )
        attrs = {
            "temp": str(temp_mc),
            "trip_point0_temp": str(trip_points_mc[0]),
            "trip_point1_temp": str(trip_points_mc[1]),
            "trip_point2_temp": str(trip_points_mc[2]),
            "hw_temp_warn1": str(trip_points_mc[1]),
            "hw_temp_warn2": str(trip_points_mc[2]),
        }
        if unique_id is not None:
            attrs["unique_id"] = unique_id
        path = self.add_device(
            "apex", f"apex_{index}", pci, attrs, {"DEVNAME": f"/dev/apex_{index}", "MAJOR": "120"}
        )
        self.add_node(f"/dev/apex_{index}")
        return path

    def firmware_load(self, syspath: str) -> str:
        """What libedgetpu's first open does: 1a6e:089a drops off, 18d1:9302 appears on its port."""
        parent, name = os.path.split(syspath)
        speed = int(Path(self.root + syspath, "speed").read_text().strip() or 5000)
        self.unplug(syspath)
        return self.add_accelerator(parent, name, state="ready", speed=speed)

    def unplug(self, syspath: str) -> None:
        """Gone from sysfs and /dev, as after a real unplug (a process holding the node keeps
        its open file)."""
        node = self.node_of(syspath)
        self.uevent(syspath, "remove")
        self.remove_device(syspath)
        if node:
            Path(self.root + node).unlink(missing_ok=True)

    @staticmethod
    def child_name(parent_syspath: str, port: int) -> str:
        parent = os.path.basename(parent_syspath)
        if parent.startswith("usb"):
            return f"{parent[3:]}-{port}"
        return f"{parent}.{port}"

    def coral_docs_tree(self) -> dict[str, str]:
        """The Coral docs' `lsusb -t` example: bus 2 (USB 3), external hub on port 3 with a
        cascaded internal sub-hub on its port 2; accelerators on 2-3.1, 2-3.2.1 and 2-3.2.2."""
        root = self.add_root_hub(2, 5000)
        hub = self.add_hub(root, 3, 5000, self_powered=True, vendor_product="2109:0817")
        sub = self.add_hub(hub, 2, 5000, self_powered=True, vendor_product="2109:0817")
        return {
            "2-3.1": self.add_accelerator(hub, 1),
            "2-3.2.1": self.add_accelerator(sub, 1),
            "2-3.2.2": self.add_accelerator(sub, 2),
        }


@contextmanager
def testbed() -> Iterator[Testbed]:
    tb = Testbed()
    try:
        yield tb
    finally:
        tb.close()


@pytest.fixture
def umock() -> Iterator[Testbed]:
    """A fresh testbed per test; skips when not under umockdev-wrapper."""
    if not in_mock_environment():
        pytest.skip("needs umockdev: run under umockdev-wrapper (make test does)")
    with testbed() as tb:
        yield tb
