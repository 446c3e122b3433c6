"""The Frigate endpoint under the packaged unit's own system-call filter.

libzmq's I/O thread calls pthread_setschedparam() (sched_setscheduler) as it starts
(libzmq src/thread.cpp, applySchedulingParameters) and aborts the whole process when
that fails. The unit denies @resources with EPERM, which holds sched_setscheduler, so
the daemon would die the moment the endpoint opens its socket. This test applies
the unit's deny lines (groups expanded by `systemd-analyze syscall-filter`) through
libseccomp in a child process, then serves a Frigate request there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from ctypes.util import find_library
from functools import cache
from pathlib import Path

import pytest

from tests.support.debian import unit_values

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or find_library("seccomp") is None,
    reason="needs systemd-analyze and libseccomp (Debian systemd, libseccomp2; make test has both)",
)


@cache
def expand(item: str) -> frozenset[str]:
    """A system call, or every call of a @group (nested groups expanded)."""
    if not item.startswith("@"):
        return frozenset([item])
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", item],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            names |= expand(word)
    return frozenset(names)


def denied_by_the_unit() -> set[str]:
    """What the unit's SystemCallFilter= lines deny: after the first (the allow list), a
    "~" line denies, a plain line allows again; the later line wins."""
    denied: set[str] = set()
    for value in unit_values("SystemCallFilter")[1:]:
        names = set().union(*(expand(w) for w in value.lstrip("~").split()))
        denied = denied | names if value.startswith("~") else denied - names
    return denied


CHILD = """
import ctypes, errno, sys
lib = ctypes.CDLL(sys.argv[1])
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW
for name in sys.argv[3:]:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # known on this architecture
        assert lib.seccomp_rule_add(ctx, 0x00050000 | errno.EPERM, nr, 0) == 0, name
assert lib.seccomp_load(ctx) == 0

import numpy as np
from edgetpud.config import FrigateConfig
from edgetpud.frigate import FrigateEndpoint, ModelPort
from tests.support.frigate import FrigateClient

endpoint = FrigateEndpoint(FrigateConfig(endpoint=sys.argv[2], model="m"), ModelPort("m", lambda: None))
endpoint.start()
client = FrigateClient(sys.argv[2], timeout_ms=5000)
reply = client.detect(np.zeros((1, 8, 8, 3), np.uint8))
assert reply.form == "one-frame" and not reply.rows.any(), reply
client.close()
endpoint.close()
print("served under the filter")
"""


def test_the_endpoint_runs_under_the_units_system_call_filter(tmp_path: Path) -> None:
    denied = denied_by_the_unit()
    assert "reboot" in denied  # the deny lines were read (@privileged)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(find_library("seccomp")),
            f"ipc://{tmp_path}/frigate.sock",
            *sorted(denied),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, (
        f"exit {child.returncode} under the unit's filter (denied: {len(denied)} calls, "
        f"sched_setscheduler {'denied' if 'sched_setscheduler' in denied else 'allowed'}):\n"
        f"{child.stdout}{child.stderr}"
    )
    assert "served under the filter" in child.stdout
