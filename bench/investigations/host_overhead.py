#!/usr/bin/env python3
"""What running the runtime in a device host costs per invoke, in CPU, against in process.

One simulated USB accelerator (fake libedgetpu, simulate mode) and one lane: N invokes of
the Edge TPU build of mobilenet_v1 0.25_128 through `edgetpud.runtime.Session` in this
process, then N through a `HostSession` in a device host. CPU is user + system time from
/proc of this process and of its children (the host), per invoke. Run it at 0 ms (the
messages and copies alone) and at 2.6 ms (a real device's wait, so sleeps and wake-ups):

    umockdev-wrapper .venv/bin/python -m bench.investigations.host_overhead --invoke-ms 0
    umockdev-wrapper .venv/bin/python -m bench.investigations.host_overhead --invoke-ms 2.6 --count 500
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common
from edgetpud.hosts import HostPool
from edgetpud.runtime import open_session
from tests.support.fakelib import CONTROL_ENV, Accelerators, Control

MODEL = common.MODELS / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--invoke-ms", type=float, default=2.6)
    ap.add_argument("--count", type=int, default=3000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgetpud-overhead."))
    control = Control(tmp / "control")
    os.environ[CONTROL_ENV] = str(control.path)
    control.set(mode="simulate", invoke_ms=args.invoke_ms)
    bed = Accelerators()
    bed.add_usb("2-1")
    lib = str(common.FAKE_LIB)
    pid = os.getpid()
    try:
        local = open_session(MODEL, "usb:2-1", library=lib)
        x = np.zeros(local.info.inputs[0].shape, np.uint8)
        for _ in range(100):
            local.invoke([x])
        c0, t0 = common.cpu_split_s(pid), time.perf_counter()
        for _ in range(args.count):
            local.invoke([x])
        c1, wall = common.cpu_split_s(pid), time.perf_counter() - t0
        local.close()
        per = 1e6 / args.count
        print(
            f"in process: {wall * per:.0f} us wall, {(c1[0] - c0[0]) * per:.0f} us CPU per invoke"
        )
        pool = HostPool()
        hosted = pool.open_session("usb:2-1", MODEL, library=lib)
        for _ in range(100):
            hosted.invoke([x])
        c0, t0 = common.cpu_split_s(pid), time.perf_counter()
        for _ in range(args.count):
            hosted.invoke([x])
        c1, wall = common.cpu_split_s(pid), time.perf_counter() - t0
        print(
            f"in a host: {wall * per:.0f} us wall, {(c1[0] - c0[0]) * per:.0f} us CPU in the "
            f"daemon + {(c1[1] - c0[1]) * per:.0f} us in the host per invoke"
        )
        hosted.close()
        pool.close()
    finally:
        bed.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
