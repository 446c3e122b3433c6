"""Edge TPU discovery: udev devices → `DeviceInfo` records with a stable identity and a verdict.

The only package that imports pyudev (in `udev` and `watcher`). The service uses
`DeviceWatcher`; `edgetpud devices` and `plan` use `enumerate_devices`.
"""

from __future__ import annotations

from edgetpud.devices.model import DeviceInfo, HubInfo, PowerInfo, ThermalInfo
from edgetpud.devices.watcher import DeviceEvent, DeviceWatcher, enumerate_devices

__all__ = [
    "DeviceEvent",
    "DeviceInfo",
    "DeviceWatcher",
    "HubInfo",
    "PowerInfo",
    "ThermalInfo",
    "enumerate_devices",
]
