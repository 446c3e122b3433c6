"""Text tree of buses, hubs and ports (like `lsusb -t`) for `edgetpud devices`.

Built from records alone, so it also renders a saved `edgetpud devices --json`.
Every accelerator line ends with its verdict; a device that is not OK has its
reasons right below it, so the problem port stands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from edgetpud.devices.buses import shares
from edgetpud.devices.model import DeviceInfo, HubInfo
from edgetpud.devices.verdict import sort_key

BRANCH = "|__ "
INDENT = "    "


@dataclass
class _Node:
    hub: HubInfo | None = None
    children: dict[str, _Node] = field(default_factory=dict)
    devices: list[DeviceInfo] = field(default_factory=list)


def _port_number(name: str) -> str:
    tail = name.rsplit(".", 1)[-1] if "." in name else name.split("-", 1)[-1]
    return tail


def _speed(mbps: int) -> str:
    return f"{mbps}M" if mbps else "?M"


def _hub_line(hub: HubInfo, below: int = 0) -> str:
    power = "self-powered" if hub.self_powered else f"bus-powered, draws {hub.max_power_ma} mA"
    extra = ", internal sub-hub" if hub.internal else ""
    if below > 1:
        extra += f", {below} accelerators below"
    return (
        f"Port {_port_number(hub.port)}: hub {hub.port}, {_speed(hub.speed_mbps)}, {power}{extra}"
    )


def _verdict_word(d: DeviceInfo) -> str:
    return "OK" if d.verdict == "ok" else d.verdict.upper()


def device_line(d: DeviceInfo) -> str:
    if d.kind == "pci":
        temp = f"  {d.thermal.temp_c:.1f} C" if d.thermal is not None else ""
        node = f"  {d.dev_node}" if d.dev_node else ""
        return f"{d.identity}{node}{temp}  {_verdict_word(d)}"
    parts = [
        f"Port {_port_number(d.port)}: {d.identity}",
        d.vendor_product,
        d.state,
        _speed(d.speed_mbps),
    ]
    if d.power is not None:
        parts.append(f"{d.power.budget_ma} mA (needs {d.power.needed_ma})")
        if d.power.shared_with:
            parts.append("shares with " + ",".join(d.power.shared_with))
    parts.append(_verdict_word(d))
    return "  ".join(p for p in parts if p)


def render(records: Sequence[DeviceInfo]) -> str:
    """The whole tree as text, ending with a newline; a hint when there are no devices."""
    if not records:
        return (
            "No Edge TPU found. Check that the accelerator is plugged in (`lsusb` shows 1a6e:089a "
            "or 18d1:9302) or that the apex driver is loaded (`ls /dev/apex_*`).\n"
        )
    lines: list[str] = []
    buses: dict[str, _Node] = {}
    for d in sorted((r for r in records if r.kind == "usb"), key=sort_key):
        bus = buses.setdefault(d.bus, _Node())
        node = bus
        chain = d.hub_chain
        if chain and chain[0].port.startswith("usb"):
            bus.hub = chain[0]
            chain = chain[1:]
        for hub in chain:
            node = node.children.setdefault(hub.port, _Node(hub=hub))
        node.devices.append(d)
    sharing = {s.bus: s for s in shares(records)}
    for name in sorted(buses, key=lambda b: int(b) if b.isdigit() else 0):
        root = buses[name]
        speed = f", {_speed(root.hub.speed_mbps)}" if root.hub is not None else ""
        share = sharing.get(name)
        shared = ""
        if share is not None and share.shared:
            shared = f": {len(share.accelerators)} accelerators share its bandwidth"
        lines.append(f"Bus {name} (root hub usb{name}{speed}){shared}")
        _render_node(root, 1, lines)
    pci = sorted((r for r in records if r.kind == "pci"), key=sort_key)
    if pci:
        lines.append("PCIe")
        for d in pci:
            _render_device(d, 1, lines)
    return "\n".join(lines) + "\n"


def _render_node(node: _Node, depth: int, lines: list[str]) -> None:
    items: list[tuple[str, _Node | DeviceInfo]] = [(k, v) for k, v in node.children.items()]
    items += [(d.port, d) for d in node.devices]
    items.sort(key=lambda kv: int(p) if (p := _port_number(kv[0])).isdigit() else 0)
    for _, item in items:
        if isinstance(item, DeviceInfo):
            _render_device(item, depth, lines)
        else:
            assert item.hub is not None
            lines.append(INDENT * (depth - 1) + BRANCH + _hub_line(item.hub, _count(item)))
            _render_node(item, depth + 1, lines)


def _render_device(d: DeviceInfo, depth: int, lines: list[str]) -> None:
    lines.append(INDENT * (depth - 1) + BRANCH + device_line(d))
    mark = "x " if d.verdict == "rejected" else "! "
    for reason in d.reasons:
        lines.append(INDENT * depth + mark + reason)


def _count(node: _Node) -> int:
    return len(node.devices) + sum(_count(c) for c in node.children.values())
