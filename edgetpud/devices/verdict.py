"""The rules that turn sysfs facts into `DeviceInfo` records with a verdict and reasons.

Pure functions over plain data: the same `judge()` runs at start-up enumeration,
on every hotplug event, on reload and in `edgetpud devices`, so a device is
described the same way wherever it is seen. Power sharing under a bus-powered
hub depends on the other accelerators below it, so `judge()` takes all of them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping, Sequence

from edgetpud.config import DevicesConfig
from edgetpud.devices.facts import ApexFacts, Facts, HubFacts, UsbFacts
from edgetpud.devices.model import DeviceInfo, HubInfo, PowerInfo, ThermalInfo, Verdict
from edgetpud.devices.thermal import DEAD_BELOW_C, is_dead, throttle_level

USB3_MBPS = 5000
USB3_PORT_MA = 900
USB2_PORT_MA = 500
NEEDED_MA = {"std": 500, "max": 900}


def port_limit_ma(speed_mbps: int) -> int:
    """What one port supplies: 900 mA on a USB 3 link, 500 mA on USB 2 (USB spec)."""
    return USB3_PORT_MA if speed_mbps >= USB3_MBPS else USB2_PORT_MA


def is_internal(hubs: Sequence[HubFacts], index: int) -> bool:
    """True when hubs[index] is a sub-hub cascaded inside the (non-root) hub above it.

    The rule: its parent is a hub that is not a root hub, and either both report the
    same vendor:product (one chip family inside one box) or sysfs marks the sub-hub
    "fixed" (not removable: wired inside its parent).
    """
    if index < 1 or hubs[index].is_root or hubs[index - 1].is_root:
        return False
    hub, parent = hubs[index], hubs[index - 1]
    same_chip = bool(hub.vendor_product) and hub.vendor_product == parent.vendor_product
    return same_chip or hub.removable == "fixed"


def judge(
    facts: Sequence[Facts],
    policy: DevicesConfig,
    *,
    performance: str | None = None,
    bad_ports: Mapping[str, str] | None = None,
    draining: Collection[str] = (),
) -> list[DeviceInfo]:
    """Records for every device in `facts`, sorted by bus and port.

    `draining`: identities of PCIe modules that reached their last trip point and have
    not yet cooled below their first (the watcher's thermal hysteresis)."""
    bad = bad_ports or {}
    usb = [f for f in facts if isinstance(f, UsbFacts)]
    records: list[DeviceInfo] = []
    for f in facts:
        if isinstance(f, UsbFacts):
            records.append(_judge_usb(f, usb, policy, performance or policy.performance, bad))
        else:
            records.append(_judge_apex(f, policy, bad, f.identity in draining))
    return sorted(records, key=sort_key)


def sort_key(record: DeviceInfo) -> tuple[int, int, tuple[int, ...], str]:
    if record.kind == "pci":
        return (1, 0, (), record.identity)
    bus, _, path = record.port.partition("-")
    parts = tuple(int(p) if p.isdigit() else 0 for p in path.split("."))
    return (0, int(bus) if bus.isdigit() else 0, parts, record.identity)


def _verdict(rejects: list[str], warnings: list[str]) -> Verdict:
    if rejects:
        return "rejected"
    return "degraded" if warnings else "ok"


def _policy_reasons(identity: str, port: str, policy: DevicesConfig) -> list[str]:
    names = (port, identity)
    for pattern in policy.deny:
        if any(fnmatch.fnmatchcase(n, pattern) for n in names):
            return [f'matches devices.deny pattern "{pattern}"; remove it there to use this device']
    if not any(fnmatch.fnmatchcase(n, p) for p in policy.allow for n in names):
        allowed = ", ".join(f'"{p}"' for p in policy.allow) or "none"
        return [f"not matched by devices.allow ({allowed}); add {port} there to use this device"]
    return []


def _learned_reason(identity: str, bad: Mapping[str, str]) -> list[str]:
    if identity not in bad:
        return []
    return [
        f"an Edge TPU could not be opened here before ({bad[identity]}); it is tried last. "
        "Move the accelerator to another port; this is forgotten once a device works here"
    ]


def _power(
    f: UsbFacts, all_usb: Sequence[UsbFacts], needed: int
) -> tuple[PowerInfo, list[str], list[str]]:
    """Budget of the accelerator's port: the port limit, capped by every bus-powered hub's share."""
    hubs = f.hubs
    link = min([f.speed_mbps, *(h.speed_mbps for h in hubs[-1:])])
    budget = port_limit_ma(link)
    shared: set[str] = set()
    limiting = ""
    for i, hub in enumerate(hubs):
        if hub.is_root or hub.self_powered:
            continue
        upstream = port_limit_ma(min([hub.speed_mbps, *(h.speed_mbps for h in hubs[i - 1 : i])]))
        below = [u for u in all_usb if any(h.name == hub.name for h in u.hubs)]
        share = max(upstream - hub.max_power_ma, 0) // max(len(below), 1)
        shared.update(u.identity for u in below if u.identity != f.identity)
        if share < budget:
            budget, limiting = share, hub.name
    power = PowerInfo(
        budget_ma=budget,
        needed_ma=needed,
        device_max_ma=f.max_power_ma,
        configured=f.configured,
        over_current_count=f.over_current_count,
        shared_with=tuple(sorted(shared)),
    )
    rejects: list[str] = []
    warnings: list[str] = []
    source = (
        f"bus-powered hub {limiting} shares {budget} mA per accelerator"
        if limiting
        else f"this port supplies {budget} mA"
    )
    if not f.configured:
        rejects.append(
            "the kernel did not configure it (empty bConfigurationValue), usually for lack of "
            "power; plug it into a self-powered hub or a USB 3 port of its own"
        )
    if budget < NEEDED_MA["std"]:
        rejects.append(
            f"{source}; an Edge TPU needs at least 500 mA: use a self-powered hub or a "
            "USB 3 port of its own"
        )
    elif budget < needed:
        warnings.append(
            f'{source}; performance = "max" needs {needed} mA, so it may reset under load: '
            'use a USB 3 port or a self-powered hub, or set devices.performance = "std"'
        )
    if f.over_current_count:
        warnings.append(
            f"its hub port has counted {f.over_current_count} over-current event(s): it drew "
            "more than the port supplies; use a self-powered hub"
        )
    return power, rejects, warnings


def _judge_usb(
    f: UsbFacts,
    all_usb: Sequence[UsbFacts],
    policy: DevicesConfig,
    performance: str,
    bad: Mapping[str, str],
) -> DeviceInfo:
    rejects = _policy_reasons(f.identity, f.name, policy)
    warnings: list[str] = []
    power, power_rejects, power_warnings = _power(f, all_usb, NEEDED_MA.get(performance, 500))
    rejects += power_rejects
    warnings += power_warnings
    if 0 < f.speed_mbps < USB3_MBPS:
        text = (
            f"linked at {f.speed_mbps} Mb/s (USB 2), where inference runs 2-4x slower; "
            "use a USB 3 port and a USB 3 cable"
        )
        if policy.usb2 == "reject":
            rejects.append(text + ' (devices.usb2 = "reject")')
        else:
            warnings.append(text)
    chain = tuple(
        HubInfo(
            port=h.name,
            self_powered=h.self_powered,
            speed_mbps=h.speed_mbps,
            max_power_ma=h.max_power_ma,
            internal=is_internal(f.hubs, i),
        )
        for i, h in enumerate(f.hubs)
    )
    if chain and chain[-1].internal and f.port_number != 1:
        parent = chain[-2].port
        text = (
            f"on port {f.port_number} of {chain[-1].port}, a sub-hub cascaded inside hub "
            f"{parent}: Edge TPUs often cannot be opened on such secondary ports; move it to "
            f"a port of {parent} itself or to port 1 of the sub-hub"
        )
        if policy.secondary_ports == "reject":
            rejects.append(text + ' (devices.secondary_ports = "reject")')
        elif policy.secondary_ports == "warn":
            warnings.append(text + ' (set devices.secondary_ports = "allow" if it works)')
    warnings += _learned_reason(f.identity, bad)
    return DeviceInfo(
        identity=f.identity,
        kind="usb",
        port=f.name,
        bus=f.bus,
        sys_path=f.sys_path,
        dev_node=f.dev_node,
        vendor_product=f.vendor_product,
        speed_mbps=f.speed_mbps,
        hub_chain=chain,
        power=power,
        state="dfu" if f.state == "dfu" else "ready",
        verdict=_verdict(rejects, warnings),
        reasons=tuple(rejects + warnings),
    )


def _judge_apex(
    f: ApexFacts, policy: DevicesConfig, bad: Mapping[str, str], draining: bool = False
) -> DeviceInfo:
    rejects = _policy_reasons(f.identity, f.pci_address, policy)
    warnings: list[str] = []
    thermal = None
    if f.temp_mc is not None:
        thermal = _thermal(f.temp_mc / 1000, tuple(t / 1000 for t in f.trip_points_mc), draining)
        (rejects if thermal.dead or thermal.draining else warnings).extend(
            _thermal_reasons(thermal)
        )
    warnings += _learned_reason(f.identity, bad)
    return DeviceInfo(
        identity=f.identity,
        kind="pci",
        port=f.pci_address,
        bus="pci",
        sys_path=f.sys_path,
        dev_node=f.dev_node,
        vendor_product="1ac1:089a",
        thermal=thermal,
        verdict=_verdict(rejects, warnings),
        reasons=tuple(rejects + warnings),
    )


_ORDINAL = {1: "first", 2: "second", 3: "third"}


def _thermal(temp: float, trips: tuple[float, ...], draining: bool) -> ThermalInfo:
    level = throttle_level(temp, trips)
    dead = is_dead(temp)
    return ThermalInfo(
        temp_c=temp,
        trip_points_c=trips,
        throttled=level > 0,
        level=level,
        dead=dead,
        draining=not dead and bool(trips) and (level >= len(trips) or draining),
    )


def _thermal_reasons(t: ThermalInfo) -> list[str]:
    trips = t.trip_points_c
    if t.dead:
        return [
            f"dead: reads {t.temp_c:.1f} °C, which no working module reports (below "
            f"{DEAD_BELOW_C:.0f} °C): the module or its sensor is faulty; reseat it, check "
            "`dmesg` for apex errors, or replace it"
        ]
    if t.draining and t.level >= len(trips):
        return [
            f"at {t.temp_c:.1f} °C, past its last trip point ({trips[-1]:.0f} °C): the driver "
            f"shuts the module down, so its models were moved; it is used again below "
            f"{trips[0]:.0f} °C; improve cooling (heatsink, airflow)"
        ]
    if t.draining:
        return [
            f"cooling down at {t.temp_c:.1f} °C after passing its last trip point "
            f"({trips[-1]:.0f} °C): it is used again below {trips[0]:.0f} °C"
        ]
    if t.throttled:
        return [
            f"at {t.temp_c:.1f} °C, past its {_ORDINAL.get(t.level, str(t.level))} trip point "
            f"({trips[t.level - 1]:.0f} °C) of {len(trips)}: the driver slows its clock; "
            "improve cooling (heatsink, airflow)"
        ]
    return []
