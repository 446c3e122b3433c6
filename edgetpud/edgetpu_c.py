"""libedgetpu's C API (edgetpu_c.h) through ctypes: enumeration, and delegates made by path.

The plugin delegate's `device` option names a device only by type and index ("usb:1", "pci:0"),
counted in libedgetpu's own enumeration order, which is not stable across reboots, lists USB
accelerators still in firmware-download mode first, and is taken again inside `load_delegate`:
an index looked up before another accelerator finishes its firmware load can open the wrong
device. `edgetpu_create_delegate(type, path, options, n)` names the device by the path
`edgetpu_list_devices()` reported, which no enumeration change can redirect; `PathDelegate`
hands that delegate to a TFLite `Interpreter` (which only asks a delegate object for
`_get_native_delegate_pointer()`). A stable identity ("usb:2-3.1", "pci:0000:03:00.0") is
mapped to its path right before opening, by the same library that opens it. Nothing here
guesses: no library or no match is an error.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgetpud.errors import DeviceError

log = logging.getLogger(__name__)

DeviceType = Literal["usb", "pci"]

# enum edgetpu_device_type in edgetpu_c.h
_TYPES: dict[int, DeviceType] = {0: "pci", 1: "usb"}
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_DELEGATE_STRING = re.compile(r"^(usb|pci)?(:\d+)?$")
APEX_CLASS = "/sys/class/apex"


class LibraryMissing(DeviceError, OSError):
    """The Edge TPU runtime library could not be loaded (also an OSError, like dlopen's)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message  # dlopen's own words, for callers that add their hint


@dataclass(frozen=True)
class EdgeTpuRef:
    """One entry of edgetpu_list_devices(): the device's type and the path libedgetpu reports."""

    type: DeviceType
    path: str  # "/sys/bus/usb/devices/2-1.3" or "/dev/apex_0"

    @property
    def name(self) -> str:
        """The path's basename: the USB port path ("2-1.3") or the apex node ("apex_0")."""
        return os.path.basename(self.path)


class _Device(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("path", ctypes.c_char_p)]


class _Option(ctypes.Structure):  # struct edgetpu_option
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


@functools.lru_cache(maxsize=8)
def _load(library: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(library)
    except OSError as exc:
        raise LibraryMissing(
            f"cannot load the Edge TPU runtime {library!r} ({exc}): install it with "
            "`apt install libedgetpu1-std` (or libedgetpu1-max) from Coral's repository, or "
            "set runtime.library to the path of libedgetpu.so.1",
            str(exc),
        ) from None
    try:
        lib.edgetpu_list_devices.restype = ctypes.POINTER(_Device)
        lib.edgetpu_list_devices.argtypes = [ctypes.POINTER(ctypes.c_size_t)]
        lib.edgetpu_free_devices.restype = None
        lib.edgetpu_free_devices.argtypes = [ctypes.POINTER(_Device)]
    except AttributeError:
        raise LibraryMissing(
            f"{library!r} loaded but has no edgetpu_list_devices(): it is not libedgetpu; set "
            "runtime.library to libedgetpu.so.1 (package libedgetpu1-std)"
        ) from None
    try:
        lib.edgetpu_create_delegate.restype = ctypes.c_void_p
        lib.edgetpu_create_delegate.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.POINTER(_Option),
            ctypes.c_size_t,
        ]
        lib.edgetpu_free_delegate.restype = None
        lib.edgetpu_free_delegate.argtypes = [ctypes.c_void_p]
        lib.edgetpu_version.restype = ctypes.c_char_p
        lib.edgetpu_version.argtypes = []
    except AttributeError:
        raise LibraryMissing(
            f"{library!r} has edgetpu_list_devices() but not edgetpu_create_delegate() or "
            "edgetpu_version(): it is not a complete libedgetpu; install libedgetpu1-std "
            "(or a maintained build) and set runtime.library to its libedgetpu.so.1"
        ) from None
    return lib


class PathDelegate:
    """A delegate made by `edgetpu_create_delegate` on one device path.

    Pass it in `experimental_delegates=[...]` like `load_delegate`'s result: the TFLite
    Interpreter (interpreter.py of tflite_runtime 2.14 and ai-edge-litert 2.3.0) only calls
    `_get_native_delegate_pointer()` on it, and keeps it alive as long as itself. Release the
    interpreter first, then `close()` this (idempotent; also on garbage collection).
    """

    def __init__(self, library: str, ref: EdgeTpuRef, pointer: int) -> None:
        self._lib: ctypes.CDLL | None = _load(library)
        self._pointer = pointer
        self.ref = ref

    def _get_native_delegate_pointer(self) -> int:
        return self._pointer

    @property
    def closed(self) -> bool:
        return self._lib is None

    def close(self) -> None:
        lib, self._lib = self._lib, None
        if lib is not None:
            lib.edgetpu_free_delegate(self._pointer)

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PathDelegate {self.ref.type} {self.ref.path}{' closed' if self.closed else ''}>"


def create_delegate(
    library: str, ref: EdgeTpuRef, options: dict[str, str] | None = None
) -> PathDelegate | None:
    """A delegate on exactly the device at `ref.path`, or None when libedgetpu refuses it.

    libedgetpu says nothing about why it refused (busy in another process, no permission on
    the node, gone, a port that cannot hold a context): see edgetpud.devices.access.
    """
    lib = _load(library)
    items = list((options or {}).items())
    array = (_Option * max(len(items), 1))()
    for i, (key, value) in enumerate(items):
        array[i].name = key.encode()
        array[i].value = value.encode()
    kind = next(code for code, name in _TYPES.items() if name == ref.type)
    pointer = lib.edgetpu_create_delegate(kind, ref.path.encode(), array, len(items))
    if not pointer:
        return None
    return PathDelegate(library, ref, int(pointer))


def list_devices(library: str) -> list[EdgeTpuRef]:
    """Every Edge TPU the runtime library sees now, in its enumeration order."""
    lib = _load(library)
    count = ctypes.c_size_t(0)
    devices = lib.edgetpu_list_devices(ctypes.byref(count))
    if not devices:
        return []
    try:
        refs = []
        for i in range(count.value):
            entry = devices[i]
            kind = _TYPES.get(entry.type)
            if kind is None or not entry.path:
                log.warning(
                    "%s listed a device of unknown type %d; ignoring it", library, entry.type
                )
                continue
            refs.append(EdgeTpuRef(kind, entry.path.decode(errors="replace")))
        return refs
    finally:
        lib.edgetpu_free_devices(devices)


def apex_pci_address(apex: str, sysfs_class: str = APEX_CLASS) -> str:
    """The PCI address ("0000:03:00.0") of the module behind /dev/<apex>, or "" if unknown."""
    try:
        real = Path(os.path.realpath(os.path.join(sysfs_class, apex)))
    except OSError:
        return ""
    for parent in real.parents:
        if _PCI_ADDRESS.match(parent.name):
            return parent.name
    return ""


def apex_unique_id(apex: str, sysfs_class: str = APEX_CLASS) -> str:
    """The driver's `unique_id` attribute for /dev/<apex>, or "" when it exposes none."""
    try:
        with open(os.path.join(sysfs_class, apex, "unique_id"), encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def find_device(identity: str, library: str) -> EdgeTpuRef:
    """The entry of edgetpu_list_devices() that a device identity names, looked up now.

    `identity` is "usb:<port path>" (e.g. "usb:2-3.1"), "pci:<PCI address>" or "pci:<unique_id>".
    """
    kind, _, key = identity.partition(":")
    if kind not in _TYPES.values() or not key or _DELEGATE_STRING.match(identity):
        raise DeviceError(
            f"unknown device identity {identity!r}: use one from `edgetpud devices`, such as "
            "usb:2-3.1 or pci:0000:03:00.0"
        )
    refs = list_devices(library)
    for ref in refs:
        if ref.type == kind and _matches(ref, key):
            return ref
    listed = ", ".join(_describe(ref) for ref in refs) or "none"
    raise DeviceError(
        f"Edge TPU {identity} is not in {library}'s device list (it lists: {listed}); check "
        "`edgetpud devices`: it may be unplugged, still loading firmware, or held by another "
        "process"
    )


def delegate_device_string(identity: str, library: str) -> str:
    """The delegate `device` option ("usb:N" / "pci:N") for a device identity, resolved now.

    `identity` is "usb:<port path>" (e.g. "usb:2-3.1"), "pci:<PCI address>" or
    "pci:<unique_id>". Generic delegate strings ("usb", "pci:0", ":1") pass through unchanged.
    """
    if _DELEGATE_STRING.match(identity):
        return identity
    kind, _, key = identity.partition(":")
    if kind not in _TYPES.values() or not key:
        raise DeviceError(
            f"unknown device identity {identity!r}: use one from `edgetpud devices`, such as "
            "usb:2-3.1 or pci:0000:03:00.0"
        )
    refs = list_devices(library)
    index = 0
    for ref in refs:
        if ref.type != kind:
            continue
        if _matches(ref, key):
            return f"{kind}:{index}"
        index += 1
    listed = ", ".join(_describe(ref) for ref in refs) or "none"
    raise DeviceError(
        f"Edge TPU {identity} is not in {library}'s device list (it lists: {listed}); check "
        "`edgetpud devices`: it may be unplugged, still loading firmware, or held by another "
        "process"
    )


def _matches(ref: EdgeTpuRef, key: str) -> bool:
    if ref.type == "usb":
        return ref.name == key
    return key in (apex_pci_address(ref.name), apex_unique_id(ref.name)) and key != ""


def _describe(ref: EdgeTpuRef) -> str:
    if ref.type == "usb":
        return f"usb:{ref.name}"
    address = apex_pci_address(ref.name)
    return f"pci:{address}" if address else ref.path


def library_version(library: str) -> str:
    """libedgetpu's own build string from `edgetpu_version()` (edgetpu_c.h), e.g.
    "BuildLabel(COMPILER=..., DATE=..., TIME=..., CL_NUMBER=...), RuntimeVersion(14)".

    Raises LibraryMissing when the library cannot be loaded or has no edgetpu_version().
    """
    lib = _load(library)
    try:
        func = lib.edgetpu_version
    except AttributeError:
        raise LibraryMissing(
            f"{library!r} has no edgetpu_version(): it is not libedgetpu, or a very old build; "
            "install libedgetpu1-std (docs/install.md says from where)"
        ) from None
    func.restype = ctypes.c_char_p
    func.argtypes = []
    raw: bytes | None = func()
    return raw.decode(errors="replace") if raw else ""
