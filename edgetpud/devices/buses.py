"""Which USB Accelerators share a bus (and a hub): the Coral docs' bandwidth warning.

Accelerators on one USB bus share its bandwidth (5 Gb/s on USB 3); with several
accelerators and large models the bus, not the TPUs, becomes the bottleneck.
Built from device records alone (no udev), for `edgetpud devices`, health and
the metrics endpoint. The load figures are filled in by the daemon, which knows
the rates and each model's bytes per inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgetpud.devices.model import DeviceInfo


@dataclass(frozen=True)
class BusShare:
    """One USB bus and the accelerators on it."""

    bus: str  # USB bus number, "2"
    speed_mbps: int  # the root hub's link speed: 5000 (USB 3) or 480 (USB 2)
    accelerators: tuple[str, ...]  # identities, in port order
    hubs: Mapping[str, tuple[str, ...]]  # hub port path -> accelerators below it (2 or more)

    @property
    def shared(self) -> bool:
        return len(self.accelerators) > 1

    def describe(self) -> str:
        """One line: `bus 2 (5000M): usb:2-1, usb:2-3.1 share it; hub 2-3: usb:2-3.1, …`."""
        speed = f"{self.speed_mbps}M" if self.speed_mbps else "?M"
        if not self.shared:
            return f"bus {self.bus} ({speed}): {self.accelerators[0]} is the only accelerator"
        text = f"bus {self.bus} ({speed}): {len(self.accelerators)} accelerators share it"
        for hub, below in sorted(self.hubs.items()):
            text += f"; {len(below)} below hub {hub}"
        return text


def shares(records: Sequence[DeviceInfo]) -> list[BusShare]:
    """Every USB bus with at least one accelerator, in bus order."""
    by_bus: dict[str, list[DeviceInfo]] = {}
    for d in records:
        if d.kind == "usb" and d.state != "gone":
            by_bus.setdefault(d.bus, []).append(d)
    out = []
    for bus in sorted(by_bus, key=lambda b: (not b.isdigit(), int(b) if b.isdigit() else 0, b)):
        devs = sorted(by_bus[bus], key=lambda d: d.port)
        speed = next(
            (h.speed_mbps for d in devs for h in d.hub_chain if h.port.startswith("usb")), 0
        )
        below: dict[str, list[str]] = {}
        for d in devs:
            for hub in d.hub_chain:
                if not hub.port.startswith("usb"):
                    below.setdefault(hub.port, []).append(d.identity)
        hubs = {h: tuple(ids) for h, ids in below.items() if len(ids) > 1}
        out.append(BusShare(bus, speed, tuple(d.identity for d in devs), hubs))
    return out


def load(
    share: BusShare,
    rates: Mapping[str, float],
    bytes_per_inference: Mapping[str, int],
    device_models: Mapping[str, Sequence[str]],
) -> tuple[float, float]:
    """(inferences/s, bytes/s) through the bus: each model's rate on an accelerator of
    this bus times its input + output bytes. A model on several devices (replicas) is
    counted once per device with an equal share of its rate."""
    per_s = 0.0
    bytes_s = 0.0
    placed: dict[str, int] = {}
    for models in device_models.values():
        for m in models:
            placed[m] = placed.get(m, 0) + 1
    for ident in share.accelerators:
        for m in device_models.get(ident, ()):
            rate = rates.get(m, 0.0) / max(placed.get(m, 1), 1)
            per_s += rate
            bytes_s += rate * bytes_per_inference.get(m, 0)
    return round(per_s, 2), round(bytes_s, 1)
