"""Device records: what edgetpud knows about one Edge TPU, as frozen plain data.

No pyudev here: placement, health and `plan --devices FILE` read these records
without touching udev. `to_json()`/`from_json()` are the `edgetpud.devices/1`
schema printed by `edgetpud devices --json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCHEMA = "edgetpud.devices/1"

Kind = Literal["usb", "pci"]
State = Literal["dfu", "ready", "gone"]
Verdict = Literal["ok", "degraded", "rejected"]


@dataclass(frozen=True)
class HubInfo:
    """One hub between the root port and the accelerator."""

    port: str  # "2-3" for a hub on port 3 of bus 2; "usb2" for a root hub
    self_powered: bool
    speed_mbps: int
    max_power_ma: int = 0  # what it draws from upstream (bMaxPower)
    internal: bool = False  # a cascaded sub-hub inside an external hub


@dataclass(frozen=True)
class PowerInfo:
    """Power facts for a USB accelerator's port."""

    budget_ma: int  # what the port can supply to this device
    needed_ma: int  # what the configured performance needs
    device_max_ma: int = 0  # the device's bMaxPower
    configured: bool = True  # False: empty bConfigurationValue, the kernel refused it
    over_current_count: int | None = None
    shared_with: tuple[str, ...] = ()  # identities sharing a bus-powered hub's budget


@dataclass(frozen=True)
class ThermalInfo:
    """Thermal facts for a PCIe module (from /sys/class/apex/apex_N)."""

    temp_c: float
    trip_points_c: tuple[float, ...] = ()
    throttled: bool = False  # at or past the first trip point: the driver slows the clock
    level: int = 0  # trip points reached: 0 full clock .. len(trip_points_c) shut down
    dead: bool = False  # a reading no working module gives (about -88 C has been reported)
    draining: bool = False  # reached the last trip point, not yet cooled below the first


@dataclass(frozen=True)
class DeviceInfo:
    """One Edge TPU, its stable identity, and whether it may be used (with reasons)."""

    identity: str  # "usb:2-3.1", "pci:0000:03:00.0" or "pci:<unique_id>"
    kind: Kind
    port: str  # USB port path "2-3.1", or the PCI address
    bus: str  # USB bus number "2", or "pci"
    sys_path: str = ""
    dev_node: str = ""
    vendor_product: str = ""  # "18d1:9302", "1a6e:089a", "1ac1:089a"
    speed_mbps: int = 0  # USB link speed; 0 for PCIe
    hub_chain: tuple[HubInfo, ...] = ()
    power: PowerInfo | None = None
    thermal: ThermalInfo | None = None
    state: State = "ready"
    verdict: Verdict = "ok"
    reasons: tuple[str, ...] = field(default=())

    @property
    def usable(self) -> bool:
        return self.verdict != "rejected" and self.state != "gone"

    @property
    def can_supply_max(self) -> bool:
        """True when the port can give the 900 mA that performance = "max" needs."""
        if self.kind == "pci":
            return True
        return self.power is not None and self.power.budget_ma >= 900

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = SCHEMA
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceInfo:
        """Rebuild a record from `to_json()` output; KeyError/TypeError/ValueError if malformed."""
        d = {k: v for k, v in data.items() if k != "schema"}
        d["hub_chain"] = tuple(HubInfo(**h) for h in d.get("hub_chain", ()))
        if d.get("power") is not None:
            p = dict(d["power"])
            p["shared_with"] = tuple(p.get("shared_with", ()))
            d["power"] = PowerInfo(**p)
        if d.get("thermal") is not None:
            t = dict(d["thermal"])
            t["trip_points_c"] = tuple(t.get("trip_points_c", ()))
            d["thermal"] = ThermalInfo(**t)
        d["reasons"] = tuple(d.get("reasons", ()))
        if d.get("kind") not in ("usb", "pci"):
            raise ValueError(f"kind must be usb or pci, got {d.get('kind')!r}")
        return cls(**d)
