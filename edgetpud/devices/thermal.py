"""Live temperatures of PCIe / M.2 Edge TPUs: reading, throttle levels, hysteresis.

The gasket/apex driver exposes `temp` and `trip_point0_temp`..`trip_point2_temp`
(millidegrees C; 85/90/95 °C by default) under /sys/class/apex/apex_N, slows the
clock past each trip point and shuts the module down past the last one. It sends
no uevent when the temperature changes, so the watcher polls these files every
`devices.thermal_interval` seconds (see `DeviceWatcher`).

Pure rules and plain file reads: no pyudev. Under umockdev the reads go to the
testbed, like every other sysfs read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from edgetpud.devices.model import DeviceInfo, ThermalInfo

DEAD_BELOW_C = -40.0  # no working module reads this cold; a dead one has read about -88 C
DEFAULT_TRIPS_C = (85.0, 90.0, 95.0)  # the apex driver's defaults


def throttle_level(temp_c: float, trips_c: tuple[float, ...]) -> int:
    """How many trip points `temp_c` has reached: 0 (full clock) .. len(trips) (shut down)."""
    return sum(1 for trip in trips_c if temp_c >= trip)


def is_dead(temp_c: float) -> bool:
    """A reading no working module gives (the -88 °C reports of dead modules)."""
    return temp_c < DEAD_BELOW_C


@dataclass(frozen=True)
class Reading:
    """One poll of one module's sysfs: millidegrees, as the driver writes them."""

    temp_mc: int | None
    trip_points_mc: tuple[int, ...]


def read(sys_path: str) -> Reading | None:
    """The module's `temp` and trip points now; None when the module is gone."""
    temp = _read_int(os.path.join(sys_path, "temp"))
    if temp is None and not os.path.isdir(sys_path):
        return None
    trips = tuple(
        t
        for t in (_read_int(os.path.join(sys_path, f"trip_point{i}_temp")) for i in range(3))
        if t is not None
    )
    return Reading(temp, trips)


def draining_next(draining: bool, temp_c: float | None, trips_c: tuple[float, ...]) -> bool:
    """Hysteresis: a module that reached its last trip point stays out of service until
    it cools below its first, so it does not bounce between shut-down and service."""
    if temp_c is None or not trips_c or is_dead(temp_c):
        return False
    if temp_c >= trips_c[-1]:
        return True
    if temp_c < trips_c[0]:
        return False
    return draining


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def state(t: ThermalInfo) -> str:
    """One word for health and events: dead, draining, throttled or ok."""
    if t.dead:
        return "dead"
    if t.draining:
        return "draining"
    return "throttled" if t.throttled else "ok"


def reading_only(before: DeviceInfo, after: DeviceInfo) -> bool:
    """True when `after` differs from `before` only by its temperature reading (and the
    reasons quoting it): same verdict, same trip-point level, same drain state. Such a
    change updates health but is no event, log line or re-plan."""
    if before.thermal is None or after.thermal is None:
        return False
    same_thermal = replace(before.thermal, temp_c=after.thermal.temp_c)
    return replace(before, thermal=same_thermal, reasons=after.reasons) == after


def crossing(before: DeviceInfo | None, after: DeviceInfo) -> dict[str, object] | None:
    """The fields of a `device_thermal` event when `after` crossed a trip point, died,
    started or stopped draining; None otherwise."""
    t = after.thermal
    if t is None:
        return None
    old = before.thermal if before is not None else None
    was = (old.level, old.dead, old.draining) if old is not None else (0, False, False)
    if (t.level, t.dead, t.draining) == was:
        return None
    return {
        "device": after.identity,
        "temperature": t.temp_c,
        "level": t.level,
        "from_level": was[0],
        "trip_points": list(t.trip_points_c),
        "state": state(t),
    }
