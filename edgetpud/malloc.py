"""The daemon's C allocator: at most two glibc malloc arenas.

glibc gives a new thread its own malloc arena while there are fewer than 8 per core
(16 on a 2-core box), and an arena keeps most of what its threads freed. The daemon's
lane threads come and go with every replug, wedge and re-plan, and each new one can
take a fresh arena and leave its peak there: through the soak's faults the daemon's
RSS rose by the free memory parked in 15 thread arenas (26 of 39 MB free, while what
Python held stayed at 12 MB). Since the interpreters run in device hosts, the daemon's
threads do Python work under the GIL, so more arenas buy no parallelism.
MALLOC_ARENA_MAX in the environment, if the admin set one, wins; the device hosts are
not affected (their interpreters' threads keep glibc's default).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

ARENAS = 2
M_ARENA_MAX = -8  # glibc's malloc.h


def cap_arenas(limit: int = ARENAS) -> bool:
    """Let glibc create at most `limit` malloc arenas in this process (threads share
    them). False when MALLOC_ARENA_MAX is set or the C library has no such setting."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, limit))
    log.debug("malloc arenas capped at %d: %s", limit, done)
    return done
