"""Drive the test Edge TPU runtime library (tests/native/fake_edgetpu.c) from tests.

- `Control` writes the control file the library re-reads on every create/prepare/invoke, so a test
  can change the behaviour of a running daemon subprocess (pass `control.env()` to it).
- `FakeLib` reads the library's test hooks through ctypes (same handle that load_delegate opened
  when the path is the same).
- `Accelerators` is a minimal umockdev testbed of USB accelerators and PCIe modules (the process
  must run under `umockdev-wrapper`); tests/support/umock.py has richer builders.

See docs/testing.md for the control-file format.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CONTROL_ENV = "FAKE_EDGETPU_CONTROL"

_KEYS = (
    "mode",
    "invoke_ms",
    "swap_ms",
    "open_ms",
    "fail_open",
    "fail_prepare",
    "fail_invoke",
    "hang",
    "abort_invoke",
    "abort_after",
    "wedge",
    "once",
    "unplug",
)


def _render(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return ",".join(str(v) for v in value)
    return str(value)


class Control:
    """The library's control file. Every `set()` replaces the file atomically (new inode)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.settings: dict[str, str] = {}
        self._write()

    def set(self, **settings: object) -> None:
        """Change some keys (`mode="simulate"`, `hang=["2-1"]`, ...); None removes a key."""
        for key, value in settings.items():
            if key not in _KEYS:
                raise KeyError(f"unknown control key {key!r}; known: {', '.join(_KEYS)}")
            if value is None:
                self.settings.pop(key, None)
            else:
                self.settings[key] = _render(value)
        self._write()

    def reset(self) -> None:
        self.settings.clear()
        self._write()

    def env(self) -> dict[str, str]:
        """Environment entries that make a subprocess use this control file."""
        return {CONTROL_ENV: str(self.path)}

    @property
    def events_path(self) -> Path:
        return self.path.with_name(self.path.name + ".events")

    def events(self) -> list[tuple[str, str, int]]:
        """Faults that fired in any process, in order: (key, device basename, pid).

        key is "abort_invoke", "unplug_abort" (a device gone during an invoke) or "wedge".
        """
        try:
            lines = self.events_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            key, dev, pid = line.split()
            out.append((key, dev, int(pid.removeprefix("pid="))))
        return out

    def fired(self, key: str, dev: str) -> bool:
        """With once=1: has fault `key` ("abort_invoke", "wedge") fired on `dev` yet?"""
        return self.path.with_name(f"{self.path.name}.fired.{key}.{dev}").exists()

    def rearm(self) -> None:
        """With once=1: let every abort_invoke / wedge fire once more."""
        for marker in self.path.parent.glob(f"{self.path.name}.fired.*"):
            marker.unlink(missing_ok=True)

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{k}={v}\n" for k, v in self.settings.items()))
        os.replace(tmp, self.path)


class FakeLib:
    """Typed access to the library's `fake_*` test hooks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        self._lib = lib
        lib.fake_created.restype = ctypes.c_int
        lib.fake_destroyed.restype = ctypes.c_int
        lib.fake_last_device.restype = ctypes.c_char_p
        lib.fake_delegate_device.restype = ctypes.c_char_p
        lib.fake_delegate_device.argtypes = [ctypes.c_void_p]
        for name in ("fake_invokes", "fake_swaps"):
            getattr(lib, name).restype = ctypes.c_long
            getattr(lib, name).argtypes = [ctypes.c_char_p]
        lib.fake_hanging.restype = ctypes.c_int
        lib.fake_hanging.argtypes = [ctypes.c_char_p]
        lib.fake_device_token.restype = ctypes.c_ulonglong
        lib.fake_device_token.argtypes = [ctypes.c_char_p]
        lib.fake_last_token.restype = ctypes.c_ulonglong
        lib.fake_reset.restype = None
        lib.fake_contexts_opened.restype = ctypes.c_int
        lib.fake_context_options.restype = ctypes.c_char_p
        lib.fake_context_options.argtypes = [ctypes.c_char_p]
        lib.fake_context_refs.restype = ctypes.c_int
        lib.fake_context_refs.argtypes = [ctypes.c_char_p]
        lib.edgetpu_version.restype = ctypes.c_char_p

    def created(self) -> int:
        return int(self._lib.fake_created())

    def destroyed(self) -> int:
        return int(self._lib.fake_destroyed())

    def last_device(self) -> str:
        return bytes(self._lib.fake_last_device()).decode()

    def delegate_device(self, delegate: Any) -> str:
        """The device path a `tflite_runtime` Delegate object is bound to."""
        return bytes(self._lib.fake_delegate_device(delegate._delegate_ptr)).decode()

    def delegate_device_pointer(self, pointer: int) -> str:
        """The device path a raw TfLiteDelegate pointer (edgetpu_create_delegate's) is bound to."""
        return bytes(self._lib.fake_delegate_device(pointer)).decode()

    def invokes(self, dev: str | None = None) -> int:
        return int(self._lib.fake_invokes(dev.encode() if dev else None))

    def swaps(self, dev: str) -> int:
        return int(self._lib.fake_swaps(dev.encode()))

    def hanging(self, dev: str) -> int:
        return int(self._lib.fake_hanging(dev.encode()))

    def device_token(self, dev: str) -> int:
        return int(self._lib.fake_device_token(dev.encode()))

    def last_token(self) -> int:
        return int(self._lib.fake_last_token())

    def contexts_opened(self) -> int:
        """Device contexts opened (not handed out again) since load or reset()."""
        return int(self._lib.fake_contexts_opened())

    def context_options(self, dev: str) -> str:
        """The options ("device=usb:0;Performance=Max") of this process's context on dev."""
        return bytes(self._lib.fake_context_options(dev.encode())).decode()

    def context_refs(self, dev: str) -> int:
        """Delegates sharing this process's context on dev (0: none open)."""
        return int(self._lib.fake_context_refs(dev.encode()))

    def version(self) -> str:
        return bytes(self._lib.edgetpu_version()).decode()

    def reset(self) -> None:
        self._lib.fake_reset()


class _Testbed:
    """libumockdev.so.0 through ctypes (no PyGObject), as in the shared reference snippet."""

    def __init__(self) -> None:
        um = ctypes.CDLL("libumockdev.so.0")
        self._glib = ctypes.CDLL("libglib-2.0.so.0")
        self._gobject = ctypes.CDLL("libgobject-2.0.so.0")
        um.umockdev_testbed_new.restype = ctypes.c_void_p
        um.umockdev_testbed_add_devicev.restype = ctypes.c_void_p
        um.umockdev_testbed_add_devicev.argtypes = (
            [ctypes.c_void_p] + [ctypes.c_char_p] * 3 + [ctypes.POINTER(ctypes.c_char_p)] * 2
        )
        um.umockdev_testbed_uevent.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        um.umockdev_testbed_remove_device.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        um.umockdev_testbed_set_attribute_link.argtypes = [ctypes.c_void_p] + [ctypes.c_char_p] * 3
        um.umockdev_testbed_get_root_dir.restype = ctypes.c_void_p
        um.umockdev_testbed_get_root_dir.argtypes = [ctypes.c_void_p]
        self._gobject.g_object_unref.argtypes = [ctypes.c_void_p]
        self._glib.g_free.argtypes = [ctypes.c_void_p]
        self._um = um
        self._tb: int | None = um.umockdev_testbed_new()
        raw = um.umockdev_testbed_get_root_dir(self._tb)
        self.root = ctypes.string_at(raw).decode()
        self._glib.g_free(raw)

    @staticmethod
    def _strv(items: Mapping[str, str]) -> Any:
        flat: list[bytes | None] = [x.encode() for kv in items.items() for x in kv]
        flat.append(None)
        return (ctypes.c_char_p * len(flat))(*flat)

    def add_device(
        self,
        subsystem: str,
        name: str,
        parent: str | None,
        attrs: Mapping[str, str],
        props: Mapping[str, str] | None = None,
    ) -> str:
        raw = self._um.umockdev_testbed_add_devicev(
            self._tb,
            subsystem.encode(),
            name.encode(),
            parent.encode() if parent else None,
            self._strv(attrs),
            self._strv(props or {}),
        )
        if not raw:
            raise RuntimeError(f"umockdev could not add {subsystem} device {name}")
        path = ctypes.string_at(raw).decode()
        self._glib.g_free(raw)
        return path

    def uevent(self, path: str, action: str) -> None:
        self._um.umockdev_testbed_uevent(self._tb, path.encode(), action.encode())

    def remove_device(self, path: str) -> None:
        self._um.umockdev_testbed_remove_device(self._tb, path.encode())

    def link(self, path: str, name: str, target: str) -> None:
        self._um.umockdev_testbed_set_attribute_link(
            self._tb, path.encode(), name.encode(), target.encode()
        )

    def node(self, devname: str, mode: int = 0o664) -> Path:
        """A device node (a plain file umockdev shows as a character device at `devname`)."""
        node = Path(self.root + devname)
        node.parent.mkdir(parents=True, exist_ok=True)
        node.touch()
        node.chmod(mode)
        return node

    def close(self) -> None:
        if self._tb is not None:
            self._gobject.g_object_unref(self._tb)  # deletes the testbed directory
            self._tb = None


def umockdev_active() -> bool:
    """True when this process runs under umockdev-wrapper (LD_PRELOAD of the preload library).

    Not umockdev_in_mock_environment(): umockdev 0.17 wants a "/" in the LD_PRELOAD entry, and
    umockdev-wrapper sets a bare library name.
    """
    return "libumockdev-preload.so" in os.environ.get("LD_PRELOAD", "")


USB_IDS = {"dfu": ("1a6e", "089a"), "ready": ("18d1", "9302")}


class Accelerators:
    """A minimal umockdev testbed: USB accelerators on root ports and PCIe apex modules."""

    def __init__(self) -> None:
        self._tb = _Testbed()
        self._buses: dict[str, str] = {}
        self.paths: dict[str, str] = {}  # name ("2-1", "apex_0") -> sysfs path
        self.nodes: dict[str, str] = {}  # name -> its /dev node
        self._devnum = 0

    def add_usb(self, port: str, state: str = "ready") -> str:
        """An accelerator at USB port path `port` ("2-1", "2-3.1": hubs are not modelled)."""
        bus = port.split("-", 1)[0]
        if bus not in self._buses:
            self._buses[bus] = self._tb.add_device(
                "usb",
                f"usb{bus}",
                None,
                {"idVendor": "1d6b", "idProduct": "0003", "busnum": bus, "speed": "5000"},
                {"DEVTYPE": "usb_device"},
            )
        vid, pid = USB_IDS[state]
        self._devnum += 1  # a new number on every plug, as the kernel gives
        node = f"/dev/bus/usb/{int(bus):03d}/{self._devnum + 1:03d}"
        attrs = {
            "idVendor": vid,
            "idProduct": pid,
            "busnum": bus,
            "devnum": str(self._devnum + 1),
            "speed": "5000",
        }
        props = {"DEVTYPE": "usb_device", "DEVNAME": node}
        path = self._tb.add_device("usb", port, self._buses[bus], attrs, props)
        self._tb.node(node)
        self.paths[port] = path
        self.nodes[port] = node
        return path

    def claim_interface(self, port: str) -> None:
        """What the kernel shows when a process claims the accelerator's interface through
        usbfs (libusb): interface <port>:1.0 bound to the "usbfs" driver. The claiming process
        is not modelled: this is the holder that /proc may not show (another user's)."""
        iface = self._tb.add_device(
            "usb",
            f"{port}:1.0",
            self.paths[port],
            {"bInterfaceNumber": "00", "bInterfaceClass": "ff"},
            {"DEVTYPE": "usb_interface"},
        )
        self._tb.link(iface, "driver", "../../../../bus/usb/drivers/usbfs")

    def node_file(self, name: str) -> Path:
        """The testbed file behind a device's /dev node (to chmod it, say)."""
        return Path(self._tb.root + self.nodes[name])

    def load_firmware(self, port: str) -> str:
        """What libedgetpu's first open does: the 1a6e:089a device drops off the bus and comes
        back on the same port as 18d1:9302 (a new sysfs node and device number)."""
        self.remove(port)
        return self.add_usb(port)

    def add_pci(self, index: int, address: str, unique_id: str = "") -> str:
        """An apex_<index> module whose PCI parent is at `address` ("0000:03:00.0")."""
        parent = self._tb.add_device("pci", address, None, {"vendor": "0x1ac1", "device": "0x089a"})
        name = f"apex_{index}"
        attrs = {"temp": "45000"}
        if unique_id:
            attrs["unique_id"] = unique_id
        path = self._tb.add_device("apex", name, parent, attrs, {"DEVNAME": f"/dev/{name}"})
        self._tb.node(f"/dev/{name}")
        self.paths[name] = path
        self.nodes[name] = f"/dev/{name}"
        return path

    def remove(self, name: str) -> None:
        """Unplug: gone from sysfs and /dev (a process holding the node keeps its open file)."""
        path = self.paths.pop(name)
        self._tb.uevent(path, "remove")
        self._tb.remove_device(path)
        node = self.nodes.pop(name, "")
        if node:
            Path(self._tb.root + node).unlink(missing_ok=True)

    def close(self) -> None:
        self._tb.close()


@contextmanager
def accelerators() -> Iterator[Accelerators]:
    """A testbed for one test; skips (with the reason) outside umockdev-wrapper."""
    if not umockdev_active():
        pytest.skip("needs umockdev: run the tests under `umockdev-wrapper` (make test does)")
    bed = Accelerators()
    try:
        yield bed
    finally:
        bed.close()


def make_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: object) -> Control:
    """A control file under tmp_path, named by FAKE_EDGETPU_CONTROL for this process."""
    control = Control(tmp_path / "fake_edgetpu.control")
    monkeypatch.setenv(CONTROL_ENV, str(control.path))
    if settings:
        control.set(**settings)
    return control


def expected_outputs(inputs: Mapping[int, bytes] | Iterable[bytes], size: int) -> bytes:
    """What a simulated invoke writes into an output of `size` bytes for these input tensors."""
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    total = sum(sum(b) for b in values)
    return bytes((total + i) & 0xFF for i in range(size))


_HOLDER = """
import sys, time
from edgetpud import edgetpu_c
lib, name = sys.argv[1:]
ref = next((r for r in edgetpu_c.list_devices(lib) if r.name == name), None)
d = edgetpu_c.create_delegate(lib, ref) if ref else None
print("held" if d is not None else "refused", flush=True)
time.sleep(3600)
"""


@contextmanager
def held_elsewhere(fake_lib: Path, name: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the accelerator `name` ("2-1", "apex_0") open through the fake
    library, as a second program using the Edge TPU would; killed on exit. It inherits this
    process's testbed (UMOCKDEV_DIR, LD_PRELOAD) and control file."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(fake_lib), name],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert proc.stdout is not None
        said = proc.stdout.readline().strip()
        if said != "held":
            raise RuntimeError(f"the holder process could not open {name}: {said or 'no answer'}")
        yield proc
    finally:
        proc.kill()
        proc.communicate(timeout=30)
