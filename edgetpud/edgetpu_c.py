"""libedgetpu's C enumeration API (edgetpu_c.h) through ctypes.

The delegate's `device` option names a device only by type and index ("usb:1", "pci:0"), counted
in libedgetpu's own enumeration order, which is not stable across reboots and lists USB
accelerators still in firmware-download mode first. So a stable identity ("usb:2-3.1",
"pci:0000:03:00.0") is mapped to an index right before opening, by asking the same library that
will open the device. Nothing here guesses: no library or no match is an error.
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


@functools.lru_cache(maxsize=8)
def _load(library: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(library)
    except OSError as exc:
        raise LibraryMissing(
            f"cannot load the Edge TPU runtime {library!r} ({exc}): install libedgetpu1-std "
            "(or libedgetpu1-max) from Coral's apt repository, or set runtime.library to the "
            "path of libedgetpu.so.1",
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
    return lib


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
