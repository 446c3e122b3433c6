"""Helpers for placement tests: compact device records and a plan's facts as plain data."""

from __future__ import annotations

from edgetpud.devices.model import DeviceInfo, HubInfo, PowerInfo
from edgetpud.placement import CPU, TIER_RANK, Placement, Plan, device_score


def dev(
    identity: str,
    *,
    speed: int = 5000,
    verdict: str = "ok",
    budget: int = 900,
    state: str = "ready",
    reasons: tuple[str, ...] = (),
) -> DeviceInfo:
    """A device record from its identity: "pci:..." is a PCIe module, "usb:B-P" an
    accelerator; "usb:1-2.3" sits on port 3 of a hub on port 2 of bus 1."""
    kind = "pci" if identity.startswith("pci:") else "usb"
    port = identity.split(":", 1)[1]
    if kind == "pci":
        return DeviceInfo(
            identity,
            "pci",
            port,
            "pci",
            verdict=verdict,  # type: ignore[arg-type]
            state=state,  # type: ignore[arg-type]
            reasons=reasons,
        )
    bus, path = port.split("-", 1)
    steps = path.split(".")[:-1]
    hubs = [HubInfo(f"usb{bus}", True, speed)] + [
        HubInfo(f"{bus}-{'.'.join(steps[: i + 1])}", True, speed) for i in range(len(steps))
    ]
    return DeviceInfo(
        identity,
        "usb",
        port,
        bus,
        speed_mbps=speed,
        hub_chain=tuple(hubs),
        power=PowerInfo(budget_ma=budget, needed_ma=500),
        verdict=verdict,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        reasons=reasons,
    )


def best_class(p: Placement, devices: dict[str, DeviceInfo]) -> tuple[int, ...]:
    """The standard-clock score of the best device a placement uses (() for CPU/none)."""
    scores = [device_score(devices[t])[:3] for t in p.targets if t in devices]
    return max(scores, default=())


def standing(
    p: Placement, devices: dict[str, DeviceInfo], performance: str = "std"
) -> tuple[object, ...]:
    """How well off a model is, as docs/placement.md defines it (bigger is better):
    its tier, then how many replicas run on Edge TPUs, then its devices' classes,
    best first."""
    tpus = [t for t in p.targets if t != CPU]
    classes = sorted((device_score(devices[t], performance) for t in tpus), reverse=True)
    return (TIER_RANK[p.tier], len(tpus), tuple(classes))


def targets(p: Plan) -> dict[str, frozenset[str]]:
    return {name: frozenset(pl.targets) for name, pl in p.placements.items()}


def moved(before: Plan, after: Plan) -> set[str]:
    """Models whose set of targets changed (what the service would stop or start)."""
    old = targets(before)
    return {m for m, t in targets(after).items() if old.get(m, frozenset()) != t}
