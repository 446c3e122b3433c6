"""Kernel names for the daemon's threads, so `top -H`, `ps -L` and `perf` tell them apart.

Python 3.11 names its threads only for itself (logs, py-spy); the kernel calls every
one of them "python3" (or "edgetpud"). `install()` gives each thread started after it
its Python name, shortened to the 15 bytes the kernel keeps: `worker:birds@usb:2-1/2`
(lane 2 of model birds on usb:2-1) becomes `birds@usb:2-1/2`, paho's network thread
`mqtt:paho`. A longer name loses its end, never the lane number.

It works through `threading.setprofile`: the hook runs once, at the first Python call
in each new thread, names it and removes itself, so it costs nothing afterwards.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

PR_SET_NAME = 15  # linux/prctl.h
LIMIT = 15  # TASK_COMM_LEN - 1

_prctl: Any = None


def os_name(name: str) -> str:
    """The kernel name for a thread with Python name `name` (at most LIMIT bytes)."""
    if name.startswith("worker:"):
        name = name[len("worker:") :]
    elif name.startswith("paho-mqtt-client"):
        name = "mqtt:paho"
    head, sep, lane = name.rpartition("/")
    suffix = sep + lane if head and lane.isdigit() else ""
    base = head if suffix else name
    room = LIMIT - len(suffix.encode())
    return base.encode()[:room].decode(errors="ignore") + suffix


def _hook(frame: FrameType, event: str, arg: Any) -> None:
    """Name the new thread from its Python name, then stop being called in it."""
    sys.setprofile(None)  # this thread only: the hook runs once
    text = os_name(threading.current_thread().name)
    _prctl(PR_SET_NAME, ctypes.c_char_p(text.encode()), 0, 0, 0)


def install() -> None:
    """Name every thread started from now on (the daemon calls this once at start)."""
    global _prctl
    if not sys.platform.startswith("linux"):
        return
    try:
        # the process's own symbols, libc's among them (find_library would run ldconfig)
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError) as exc:  # names are a convenience: carry on without
        log.debug("threads keep the kernel's default names (%s)", exc)
        return
    threading.setprofile(_hook)
