"""Reset a USB Accelerator from software: USBDEVFS_RESET on its /dev/bus/usb/BBB/DDD node.

What `usbreset` does, and what libedgetpu itself does when it closes a device
(driver/usb/local_usb_device.cc, LocalUsbDevice::Close -> libusb_reset_device). The kernel
re-enumerates the device on the same port; a wedged accelerator comes back in
firmware-download mode (1a6e:089a) and is loaded again at the next open. Call it only after
the process that held the device is gone: a reset under a live libedgetpu fails that process's
transfers, and libedgetpu aborts on a failed transfer.
"""

from __future__ import annotations

import errno
import fcntl
import os

from edgetpud.devices.access import SYSFS_USB, usb_node
from edgetpud.errors import DeviceError

USBDEVFS_RESET = (ord("U") << 8) | 20  # _IO('U', 20) in <linux/usbdevice_fs.h>


class ResetFailed(DeviceError):
    """The USB reset could not be done; the message says why and what to do."""

    def __init__(self, node: str, message: str) -> None:
        self.node = node
        super().__init__(message)


def reset_usb_device(node: str) -> None:
    """Reset the USB device whose node is `node` ("/dev/bus/usb/002/003")."""
    try:
        fd = os.open(node, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ResetFailed(
            node,
            f"cannot reset {node}: no such device node; the accelerator was unplugged or has "
            "re-enumerated with a new device number (look it up again: `edgetpud devices`)",
        ) from None
    except PermissionError as exc:
        raise ResetFailed(
            node,
            f"cannot reset {node}: {exc.strerror}; the service needs write access to the node "
            "(group plugdev through Coral's udev rule) and, under systemd, "
            "DeviceAllow=char-usb_device rw in its unit",
        ) from None
    except OSError as exc:
        raise ResetFailed(node, f"cannot reset {node}: open failed: {exc.strerror}") from None
    try:
        fcntl.ioctl(fd, USBDEVFS_RESET, 0)
    except OSError as exc:
        raise ResetFailed(node, _ioctl_message(node, exc)) from None
    finally:
        os.close(fd)


def reset_identity(identity: str, sysfs: str = SYSFS_USB) -> str | None:
    """Reset the Edge TPU `identity` names, if software can; what was done, or None.

    "usb:<port>": USBDEVFS_RESET on its node (looked up now: a replug changes the device
    number). "pci:..." and "cpu": None, nothing to do from here (a PCIe module is closed and
    reopened; one that stays wedged needs its driver reloaded or a reboot). Fits
    `edgetpud.hosts.HostPool(reset=...)`. Raises ResetFailed when a reset was due but failed.
    """
    kind, _, port = identity.partition(":")
    if kind != "usb" or not port:
        return None
    node = usb_node(port, sysfs)
    if not node:
        raise ResetFailed(
            "",
            f"cannot reset {identity}: it is not in sysfs (no busnum/devnum under "
            f"{sysfs}/{port}); it was unplugged or is re-enumerating",
        )
    reset_usb_device(node)
    return f"reset {identity} ({node}) with USBDEVFS_RESET; it re-enumerates on the same port"


def _ioctl_message(node: str, exc: OSError) -> str:
    what = f"cannot reset {node} (ioctl USBDEVFS_RESET: {exc.strerror})"
    if exc.errno == errno.ENOTTY:
        return f"{what}: it is not a USB device node; pass /dev/bus/usb/BBB/DDD of the accelerator"
    if exc.errno == errno.ENODEV:
        return f"{what}: the device is gone (unplugged); wait for it to come back"
    if exc.errno in (errno.EPERM, errno.EACCES):
        return (
            f"{what}: not permitted; run the service with write access to the node, and under "
            "systemd allow it: DeviceAllow=char-usb_device rw, SystemCallFilter=@system-service"
        )
    if exc.errno == errno.EBUSY:
        return f"{what}: another driver holds an interface; stop the process using it first"
    return f"{what}: replug the accelerator if it does not come back on its own"
