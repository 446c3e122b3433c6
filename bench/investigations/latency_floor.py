"""The floor under benchmark 3: request_path with the plain-socket echo responders beside
the paho echo and edgetpud, all taking turns on the same paced requests.

docs/benchmarks.md ("Why the request-path target is out of reach on this machine") rests
on these figures: `raw` answers from the thread that read the request (the floor of the
broker, TCP loopback and this VM's wake-ups), `rawthread` from a worker thread the reader
hands each request to, `rawwait` from that worker after a 2.6 ms sleep as the simulated
invoke (its added p50: the least any responder with a thread per model and this device
adds here, doing nothing). Writes bench/results/latency_floor.json.

    umockdev-wrapper .venv/bin/python -m bench.investigations.latency_floor [--quick]
"""

from __future__ import annotations

import sys
from typing import Any

from bench import common, request_path

RAW = "bench.investigations.raw_echo"
FLOOR_CLIENTS = {
    "raw": [RAW, "--client", "raw"],
    "rawthread": [RAW, "--client", "rawthread"],
    "rawwait": [RAW, "--client", "rawthread", "--wait-ms", str(common.INVOKE_MS)],
}


def run(quick: bool = False) -> dict[str, Any]:
    echoes = {**request_path.ECHO_CLIENTS, **FLOOR_CLIENTS}
    return request_path.run(quick, echoes, name="latency_floor")


if __name__ == "__main__":
    sys.exit(common.main(__doc__, run))
