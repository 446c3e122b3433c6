"""pyudev → facts: the one match function used for enumeration and for hotplug events.

The only module (with `watcher`) that imports pyudev. `match()` never raises for
a device that vanished or has odd attributes: it returns None or partial facts.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pyudev

from edgetpud.devices.facts import (
    PCI_APEX,
    USB_DFU,
    USB_READY,
    ApexFacts,
    Facts,
    HubFacts,
    UsbFacts,
)

log = logging.getLogger(__name__)

ACCELERATORS = frozenset({USB_READY, USB_DFU})
SUBSYSTEMS = ("usb", "apex")
SELF_POWERED = 0x40  # bmAttributes bit 6


def attr(device: Any, name: str) -> str | None:
    """A sysfs attribute as stripped text, or None when absent or unreadable."""
    try:
        value = device.attributes.get(name)
    except (OSError, UnicodeDecodeError):
        return None
    if value is None:
        return None
    text: str = value.decode("utf-8", "replace").strip() if isinstance(value, bytes) else str(value)
    return text.strip()


def _int(text: str | None, default: int = 0, base: int = 10) -> int:
    if not text:
        return default
    try:
        return int(float(text)) if base == 10 else int(text, base)
    except ValueError:
        return default


def _milliamps(text: str | None) -> int:
    """bMaxPower reads like "896mA"."""
    return _int((text or "").lower().removesuffix("ma").strip())


def vendor_product(device: Any) -> str:
    return f"{(attr(device, 'idVendor') or '').lower()}:{(attr(device, 'idProduct') or '').lower()}"


def is_usb_device(device: Any) -> bool:
    return bool(device.subsystem == "usb" and device.device_type == "usb_device")


def hub_facts(device: Any) -> HubFacts:
    bm = _int(attr(device, "bmAttributes"), base=16)
    return HubFacts(
        name=device.sys_name,
        vendor_product=vendor_product(device),
        speed_mbps=_int(attr(device, "speed")),
        # root hubs have no bmAttributes in some kernels; the host controller powers them
        self_powered=bool(bm & SELF_POWERED) or device.sys_name.startswith("usb"),
        max_power_ma=_milliamps(attr(device, "bMaxPower")),
        removable=attr(device, "removable") or "",
    )


def over_current_count(parent_path: str, parent_name: str, child_name: str) -> int | None:
    """`<hub>/<hub-interface>/<hub-port>/over_current_count`, e.g. usb2 → 2-0:1.0/usb2-port3."""
    port = child_name.rsplit(".", 1)[-1] if "." in child_name else child_name.split("-", 1)[-1]
    if parent_name.startswith("usb"):
        interface = f"{parent_name[3:]}-0:1.0"
    else:
        interface = f"{parent_name}:1.0"
    path = os.path.join(parent_path, interface, f"{parent_name}-port{port}", "over_current_count")
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def usb_facts(device: Any) -> UsbFacts:
    hubs: list[HubFacts] = []
    parent = device.parent
    while parent is not None and is_usb_device(parent):
        hubs.append(hub_facts(parent))
        parent = parent.parent
    hubs.reverse()
    occ = None
    if device.parent is not None and hubs:
        occ = over_current_count(device.parent.sys_path, hubs[-1].name, device.sys_name)
    return UsbFacts(
        name=device.sys_name,
        vendor_product=vendor_product(device),
        speed_mbps=_int(attr(device, "speed")),
        sys_path=device.sys_path,
        dev_node=device.device_node or "",
        max_power_ma=_milliamps(attr(device, "bMaxPower")),
        configured=bool(attr(device, "bConfigurationValue")),
        over_current_count=occ,
        hubs=tuple(hubs),
    )


def apex_facts(device: Any) -> ApexFacts | None:
    pci = device.parent
    while pci is not None and pci.subsystem != "pci":
        pci = pci.parent
    if pci is not None:
        ids = f"{_int(attr(pci, 'vendor'), base=16):04x}:{_int(attr(pci, 'device'), base=16):04x}"
        if ids != PCI_APEX:
            return None
    temp = attr(device, "temp")
    trips = (attr(device, f"trip_point{i}_temp") for i in range(3))
    return ApexFacts(
        name=device.sys_name,
        pci_address=pci.sys_name if pci is not None else device.sys_name,
        sys_path=device.sys_path,
        dev_node=device.device_node or device.properties.get("DEVNAME") or "",
        unique_id=attr(device, "unique_id") or "",
        temp_mc=_int(temp) if temp else None,
        trip_points_mc=tuple(_int(t) for t in trips if t),
    )


def match(device: Any) -> Facts | None:
    """Facts for an Edge TPU, or None for anything else (hubs, interfaces, other devices)."""
    if device.subsystem == "apex":
        return apex_facts(device)
    if is_usb_device(device) and vendor_product(device) in ACCELERATORS:
        return usb_facts(device)
    return None


def scan(context: Any) -> list[Facts]:
    """Every Edge TPU udev knows now (USB Accelerators and apex modules)."""
    found: list[Facts] = []
    for subsystem in SUBSYSTEMS:
        for device in context.list_devices(subsystem=subsystem):
            try:
                facts = match(device)
            except (OSError, pyudev.DeviceNotFoundError) as exc:
                log.debug("skipping %s, it vanished while being read: %s", device.sys_path, exc)
                continue
            if facts is not None:
                found.append(facts)
    return found


def new_context() -> Any:
    return pyudev.Context()
