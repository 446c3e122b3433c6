"""What sysfs says about one Edge TPU and the hubs above it, as plain data.

`edgetpud.devices.udev` fills these from pyudev; `edgetpud.devices.verdict` judges
them. Neither this module nor the verdict rules import pyudev, so the rules are
tested with plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

USB_READY = "18d1:9302"  # Google: firmware loaded
USB_DFU = "1a6e:089a"  # Global Unichip: waiting for firmware
PCI_APEX = "1ac1:089a"  # the PCIe / M.2 module's PCI ids


@dataclass(frozen=True)
class HubFacts:
    """One hub above an accelerator (root hub first in `UsbFacts.hubs`)."""

    name: str  # sysfs name: "usb2" for the root hub of bus 2, "2-3" for a hub on its port 3
    vendor_product: str = ""
    speed_mbps: int = 0
    self_powered: bool = True  # bit 6 (0x40) of bmAttributes
    max_power_ma: int = 0  # bMaxPower: what the hub itself draws from upstream
    removable: str = ""  # sysfs "removable": "fixed" means built into its parent

    @property
    def is_root(self) -> bool:
        return self.name.startswith("usb")


@dataclass(frozen=True)
class UsbFacts:
    """One USB Accelerator as sysfs shows it."""

    name: str  # sysfs name = port path, "2-3.1"
    vendor_product: str
    speed_mbps: int
    sys_path: str = ""
    dev_node: str = ""
    max_power_ma: int = 0  # bMaxPower ("896mA")
    configured: bool = True  # False when bConfigurationValue is empty
    over_current_count: int | None = None  # from the hub port's sysfs, when present
    hubs: tuple[HubFacts, ...] = ()  # root hub first, the accelerator's own hub last

    @property
    def identity(self) -> str:
        return f"usb:{self.name}"

    @property
    def bus(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def port_number(self) -> int:
        """The accelerator's port on its own hub (the last number of the port path)."""
        tail = self.name.rsplit(".", 1)[-1] if "." in self.name else self.name.split("-", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    @property
    def state(self) -> str:
        return "dfu" if self.vendor_product == USB_DFU else "ready"


@dataclass(frozen=True)
class ApexFacts:
    """One PCIe / M.2 Edge TPU (gasket/apex driver) as sysfs shows it."""

    name: str  # "apex_0"
    pci_address: str  # "0000:03:00.0"
    sys_path: str = ""
    dev_node: str = ""  # "/dev/apex_0"
    unique_id: str = ""  # a stable serial when the driver exposes one
    temp_mc: int | None = None  # millidegrees C
    trip_points_mc: tuple[int, ...] = ()

    @property
    def identity(self) -> str:
        return f"pci:{self.unique_id or self.pci_address}"


Facts = Union[UsbFacts, ApexFacts]
