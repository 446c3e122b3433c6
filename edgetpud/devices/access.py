"""Who may open an Edge TPU's device node, and who holds it open right now.

libedgetpu refuses a device with nothing but a NULL delegate ("Failed to load delegate from
libedgetpu.so.1") when another process holds it (a USB Accelerator's interface is claimed by one
process at a time: libusb_claim_interface gives LIBUSB_ERROR_BUSY) or when this process may not
open its node (LIBUSB_ERROR_ACCESS; /dev/apex_N's mode). Neither is a fault of the port, so
before a refused open is blamed on the port, `diagnose` looks at the node itself —
/dev/bus/usb/BBB/DDD (BBB/DDD from sysfs busnum/devnum) or /dev/apex_N — and at every process's
open files in /proc/*/fd. Plain files and /proc only: no pyudev.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass

from edgetpud.errors import DeviceError

SYSFS_USB = "/sys/bus/usb/devices"


@dataclass(frozen=True)
class Holder:
    """A process with the device node open."""

    pid: int
    comm: str  # /proc/<pid>/comm: the process name, at most 15 characters

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.comm})"


class DeviceBusy(DeviceError):
    """Another process holds the Edge TPU: not a fault of the device or its port."""

    def __init__(self, identity: str, node: str, holders: tuple[Holder, ...]) -> None:
        self.identity = identity
        self.node = node
        self.holders = holders
        # plain data that survives edgetpud.hosts.wire (Holder objects arrive as strings)
        self.pids = [h.pid for h in holders]
        if holders:
            who = f"{', '.join(str(h) for h in holders)} has {node} open"
        else:
            who = (
                "a process has claimed its USB interface (sysfs shows the interface bound to "
                "usbfs), and /proc does not show this user which one (the unit's "
                f"ProtectProc=invisible hides other users' processes; `sudo fuser -v {node}` "
                "names it)"
            )
        super().__init__(
            f"Edge TPU {identity} is in use by another process: {who}. Stop that process, or "
            "take the accelerator out of its configuration; edgetpud opens it again on its "
            "own once it is free (the port is not at fault)"
        )


class DeviceNotPermitted(DeviceError):
    """This process may not open the Edge TPU's node: a permission problem, not a bad port."""

    def __init__(self, identity: str, node: str, detail: str, group: str) -> None:
        self.identity = identity
        self.node = node
        self.group = group
        user = user_name()
        super().__init__(
            f"Edge TPU {identity}: user {user} may not read and write {node} ({detail}). Add "
            f"{user} to the group that owns it (`usermod -aG {group} {user}`, then restart "
            "edgetpud), or check the udev rule that sets its group and mode "
            "(/usr/lib/udev/rules.d/60-edgetpud.rules from the edgetpud package: "
            "`udevadm control --reload && udevadm trigger`, or replug)"
        )


def usb_node(port: str, sysfs: str = SYSFS_USB) -> str:
    """/dev/bus/usb/BBB/DDD of the USB device at port path `port` ("2-3.1"), "" if unknown."""
    try:
        with open(os.path.join(sysfs, port, "busnum"), encoding="ascii") as f:
            bus = int(f.read().strip())
        with open(os.path.join(sysfs, port, "devnum"), encoding="ascii") as f:
            dev = int(f.read().strip())
    except (OSError, ValueError):
        return ""
    return f"/dev/bus/usb/{bus:03d}/{dev:03d}"


def device_node(kind: str, name: str, sysfs: str = SYSFS_USB) -> str:
    """The node libedgetpu opens for a listed device: `kind` "usb" or "pci", `name` the basename
    of its listed path ("2-3.1", "apex_0"); "" when it cannot be told (the device is gone)."""
    if kind == "pci":
        return f"/dev/{name}"
    return usb_node(name, sysfs)


def usb_claimed(port: str, sysfs: str = SYSFS_USB) -> bool:
    """Has a process claimed one of this USB device's interfaces through usbfs (libusb)?

    The kernel binds a claimed interface to its "usbfs" driver, so sysfs shows the claim even
    when /proc hides the process that made it.
    """
    try:
        entries = os.listdir(sysfs)
    except OSError:
        return False
    for entry in entries:
        if not entry.startswith(port + ":"):
            continue
        try:
            driver = os.readlink(os.path.join(sysfs, entry, "driver"))
        except OSError:
            continue
        if os.path.basename(driver) == "usbfs":
            return True
    return False


def holders(node: str, proc: str = "/proc") -> tuple[Holder, ...]:
    """Other processes that have `node` open, found through /proc/<pid>/fd.

    A file descriptor matches when it is the same character device (st_rdev) or the same file
    (st_dev, st_ino). Processes whose fds this user may not list are skipped: run as root (or
    as the same user) to see them all.
    """
    try:
        target = os.stat(node)
    except OSError:
        return ()
    found = []
    me = os.getpid()
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        fd_dir = os.path.join(proc, entry.name, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                st = os.stat(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if _same_node(target, st):
                found.append(Holder(int(entry.name), _comm(proc, entry.name)))
                break
    return tuple(sorted(found, key=lambda h: h.pid))


def check_permission(identity: str, node: str) -> None:
    """Raise DeviceNotPermitted when this process may not open `node` for reading and writing."""
    fallback = "apex" if "/apex_" in node else "plugdev"
    try:
        st = os.stat(node)
    except PermissionError as exc:
        raise DeviceNotPermitted(
            identity, node, f"{exc.strerror} on a folder above it", fallback
        ) from None
    except OSError:
        return  # no node: not a permission problem (unplugged, or re-enumerating)
    if os.access(node, os.R_OK | os.W_OK):
        return
    owner = user_name(st.st_uid)
    group = group_name(st.st_gid)
    mode = stat.filemode(st.st_mode)
    raise DeviceNotPermitted(
        identity, node, f"{mode} {owner}:{group}", group if group != "root" else fallback
    )


def diagnose(identity: str, kind: str, name: str, *, sysfs: str = SYSFS_USB) -> DeviceError | None:
    """Why libedgetpu may have refused this device, when the node says so: DeviceNotPermitted
    or DeviceBusy; None when neither explains it (then the device or its port may be at fault).
    """
    node = device_node(kind, name, sysfs)
    if not node:
        return None
    try:
        check_permission(identity, node)
    except DeviceNotPermitted as exc:
        return exc
    held = holders(node)
    if held or (kind == "usb" and usb_claimed(name, sysfs)):
        return DeviceBusy(identity, node, held)
    return None


def _same_node(target: os.stat_result, st: os.stat_result) -> bool:
    if stat.S_ISCHR(target.st_mode) and stat.S_ISCHR(st.st_mode):
        return target.st_rdev == st.st_rdev
    return (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino)


def _comm(proc: str, pid: str) -> str:
    try:
        with open(os.path.join(proc, pid, "comm"), encoding="utf-8", errors="replace") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def user_name(uid: int | None = None) -> str:
    """The name of `uid` (default: this process's), or the number when it has none."""
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    """The name of group `gid`, or the number when it has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
