"""Kernel names for the daemon's threads, so `top -H`, `ps -L` and `perf` tell them apart.

Python 3.11 names its threads only for itself (logs, py-spy); the kernel calls every
one of them "python3" (or "edgetpud"). `install()` gives each thread started after it
its Python name, shortened to the 15 bytes the kernel keeps: `worker:birds@usb:2-1/2`
(lane 2 of model birds on usb:2-1) becomes `birds@usb:2-1/2`, paho's network thread
`mqtt:paho`. A name longer than that loses its middle, never the lane number.

It works through `threading.setprofile`: the hook runs once, at the first Python call
in each new thread, names it and removes itself, so it costs nothing afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
    encoded = base.encode()
    if len(encoded) > room:
        encoded = encoded[:room]
    return encoded.decode(errors="ignore") + suffix


def name_current_thread(name: str | None = None) -> None:
    """Give the calling thread its kernel name (default: from its Python name)."""
    if _prctl is None:
        return
    text = os_name(name if name is not None else threading.current_thread().name)
    _prctl(PR_SET_NAME, ctypes.c_char_p(text.encode()), 0, 0, 0)


def _hook(frame: FrameType, event: str, arg: Any) -> None:
    sys.setprofile(None)  # this thread only: the hook runs once
    name_current_thread()


def install() -> None:
    """Name every thread started from now on (the daemon calls this once at start)."""
    global _prctl
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _prctl = libc.prctl
    except (OSError, AttributeError) as exc:  # names are a convenience: carry on without
        log.debug("threads keep the kernel's default names (%s)", exc)
        return
    threading.setprofile(_hook)
