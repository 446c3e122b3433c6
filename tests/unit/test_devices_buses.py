"""Which accelerators share a USB bus and a hub, and the load through it, as plain records."""

from __future__ import annotations

from edgetpud.devices.buses import load, shares
from edgetpud.devices.model import DeviceInfo, HubInfo

ROOT2 = HubInfo("usb2", True, 5000)
ROOT1 = HubInfo("usb1", True, 480)
HUB = HubInfo("2-3", True, 5000)


def usb(port: str, *chain: HubInfo) -> DeviceInfo:
    return DeviceInfo(f"usb:{port}", "usb", port, port.split("-", maxsplit=1)[0], hub_chain=chain)


def test_two_accelerators_under_one_hub_share_bus_and_hub_a_third_is_alone() -> None:
    records = [
        usb("2-3.1", ROOT2, HUB),
        usb("2-3.2", ROOT2, HUB),
        usb("1-1", ROOT1),
        DeviceInfo("pci:0000:03:00.0", "pci", "0000:03:00.0", "pci"),
    ]
    one, two = shares(records)
    assert (one.bus, one.speed_mbps, one.accelerators, one.shared) == (
        "1",
        480,
        ("usb:1-1",),
        False,
    )
    assert (two.bus, two.speed_mbps, two.accelerators) == ("2", 5000, ("usb:2-3.1", "usb:2-3.2"))
    assert two.hubs == {"2-3": ("usb:2-3.1", "usb:2-3.2")}
    assert two.describe() == "bus 2 (5000M): 2 accelerators share it; 2 below hub 2-3"
    assert one.describe() == "bus 1 (480M): usb:1-1 is the only accelerator"


def test_load_counts_each_model_on_the_bus_by_its_bytes_per_inference() -> None:
    (bus,) = shares([usb("2-1", ROOT2), usb("2-2", ROOT2)])
    placed = {"usb:2-1": ["birds"], "usb:2-2": ["faces"], "pci:0000:03:00.0": ["cars"]}
    rates = {"birds": 100.0, "faces": 50.0, "cars": 400.0}
    sizes = {"birds": 150_528 + 1001, "faces": 10_000, "cars": 1}
    per_s, bytes_s = load(bus, rates, sizes, placed)
    assert per_s == 150.0
    assert bytes_s == 100 * 151_529 + 50 * 10_000


def test_a_replicated_model_counts_its_share_on_each_device() -> None:
    (bus,) = shares([usb("2-1", ROOT2)])
    per_s, _ = load(bus, {"birds": 100.0}, {"birds": 1}, {"usb:2-1": ["birds"], "pci:x": ["birds"]})
    assert per_s == 50.0
