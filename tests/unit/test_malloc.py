"""The daemon caps glibc's malloc arenas (edgetpud/malloc.py).

Each case runs in a fresh Python process: 8 threads, alive together, each allocate a
block (malloc, past pymalloc's small-object pools), and glibc's own report
(malloc_info) says how many arenas ("heaps") the process then has.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

THREADS = 8

PROGRAM = f"""
import ctypes, sys, threading
from edgetpud import malloc
capped = malloc.cap_arenas() if sys.argv[1] == "cap" else None
barrier = threading.Barrier({THREADS} + 1)
def lane():
    block = bytearray(256 * 1024)  # a malloc in this thread's arena
    barrier.wait()
    barrier.wait()
    del block
threads = [threading.Thread(target=lane) for _ in range({THREADS})]
for t in threads:
    t.start()
barrier.wait()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fclose(ctypes.c_void_p(out))
barrier.wait()
for t in threads:
    t.join()
print(capped)
"""


def arenas(tmp_path: Path, how: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """(arenas in the process, what cap_arenas returned) for a run with `how` = cap|none."""
    report = tmp_path / f"malloc-{how}.xml"
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, how, str(report)],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return len(re.findall(r'<heap nr="\d+">', report.read_text())), done.stdout.strip()


@pytest.fixture(autouse=True)
def _glibc() -> None:
    if not os.confstr("CS_GNU_LIBC_VERSION"):
        pytest.skip("malloc arenas are glibc's")


def test_threads_share_two_arenas_once_capped(tmp_path: Path) -> None:
    uncapped, _ = arenas(tmp_path, "none")
    assert uncapped > 2  # glibc's default: a new arena for each new thread, 8 per core
    capped, returned = arenas(tmp_path, "cap")
    assert (capped, returned) == (2, "True")


def test_an_admins_malloc_arena_max_wins(tmp_path: Path) -> None:
    count, returned = arenas(tmp_path, "cap", {"MALLOC_ARENA_MAX": "4"})
    assert (count, returned) == (4, "False")
