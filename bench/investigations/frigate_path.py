#!/usr/bin/env python3
"""Where a Frigate request's time goes, stage by stage (the figures behind docs/benchmarks.md).

The daemon's own parts in this process, as `edgetpud run` wires them for `[frigate]`:
the endpoint (edgetpud/frigate/), the model's queue, one worker per simulated Edge TPU
with its lanes, each lane's session in a device host (edgetpud/hosts), the detect
postprocessor, and the result handed to the request's `reply`. Two Frigate clients are
processes of their own (bench/frigate_peer.py), as in bench/frigate.py. No MQTT link,
no supervisor: what those cost is the difference to bench/frigate.py's figures.

Each request is stamped (time.monotonic, one clock for every thread) where it passes:
A arrived (the endpoint's thread has the message), B queued, C a lane took it, D the
lane sends it to its device host, E the host's answer is back, F the endpoint has the
result, G the reply is handed to ZeroMQ. The stamps come from wrappers around those
calls (a few microseconds each, included). Printed: the median of each stage, and the
client's round trip less A..G (ZeroMQ both ways, the client, and the endpoint thread's
wake-up before A).

    umockdev-wrapper .venv/bin/python -m bench.investigations.frigate_path [--seconds 10]
        [--lanes 4] [--switch-interval-ms 5]
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from bench.frigate import INVOKE_MS, bare_invoke_ms, echo_floor, run_clients
from edgetpud.config import FrigateConfig
from edgetpud.frigate import FrigateEndpoint, ModelPort
from edgetpud.hosts import HostPool
from edgetpud.messages import Request, Result
from edgetpud.modelfile import inspect_model
from edgetpud.preprocess import make_preprocess
from edgetpud.workers import ModelQueue, Worker
from tests.support.fakelib import CONTROL_ENV, Accelerators, Control
from tests.support.ssd_model import ssd_edgetpu_model

STAGES = [
    ("A..B endpoint thread: read, check, queue", "A", "B"),
    ("A..C arrival until a lane took it", "A", "C"),
    ("C..D lane: preprocess, device gate", "C", "D"),
    ("D..E device host round trip, invoke included", "D", "E"),
    ("E..F lane: outputs, postprocess, bookkeeping", "E", "F"),
    ("F..G endpoint: rows, reply handed to ZeroMQ", "F", "G"),
    ("A..G in this process", "A", "G"),
]


@dataclass
class Served:
    name: str
    queue: ModelQueue
    info: Any
    workers: dict[str, Worker] = field(default_factory=dict)
    disabled: str = ""


class Stamps:
    """Per request id: stage letter -> time.monotonic(); the lane's current request per thread."""

    def __init__(self) -> None:
        self.at: dict[str, dict[str, float]] = defaultdict(dict)
        self.pid: dict[str, int] = {}
        self.after_reply: list[float] = []  # ms from a lane's reply until it waits again
        self.local = threading.local()
        self.on = False

    def mark(self, rid: str, stage: str) -> None:
        if self.on:
            self.at[rid][stage] = time.monotonic()

    def current(self, stage: str) -> None:
        rid = getattr(self.local, "rid", None)
        if rid is not None:
            self.mark(rid, stage)

    def client_sides(self, outs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
        """Per request, ms: the client's send until A, and G until the client has the
        reply (each request matched to the client's frame whose span holds it)."""
        spans = {out["pid"]: out["spans"] for out in outs}
        before, after = [], []
        for rid, s in self.at.items():
            frames = spans.get(self.pid.get(rid, -1))
            if not frames or "A" not in s or "G" not in s:
                continue
            i = bisect.bisect_right([f[0] for f in frames], s["A"]) - 1
            if i >= 0 and frames[i][0] <= s["A"] and s["G"] <= frames[i][1]:
                before.append((s["A"] - frames[i][0]) * 1000.0)
                after.append((frames[i][1] - s["G"]) * 1000.0)
        return before, after

    def medians(self) -> list[tuple[str, float, int]]:
        out = []
        for label, a, b in STAGES:
            spans = [(s[b] - s[a]) * 1000.0 for s in self.at.values() if a in s and b in s]
            out.append((label, statistics.median(spans) if spans else float("nan"), len(spans)))
        return out


def traced_session(session: Any, stamps: Stamps) -> Any:
    invoke = session.invoke

    def wrapped(inputs: Any) -> Any:
        stamps.current("D")
        try:
            return invoke(inputs)
        finally:
            stamps.current("E")

    session.invoke = wrapped
    return session


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--lanes", type=int, default=4, help="interpreters per device (runtime.tpu_interpreters)"
    )
    ap.add_argument(
        "--switch-interval-ms",
        type=float,
        default=0.0,
        help="sys.setswitchinterval; 0: Python's default (5 ms)",
    )
    args = ap.parse_args()
    common.ensure_umockdev()
    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    tmp = Path(tempfile.mkdtemp(prefix="edgetpud-frigate-path."))
    control = Control(tmp / "control")
    os.environ[CONTROL_ENV] = str(control.path)
    control.set(mode="simulate", invoke_ms=INVOKE_MS)
    bed = Accelerators()
    devices = ["usb:2-1", "usb:2-2"]
    for d in devices:
        bed.add_usb(d.removeprefix("usb:"))
    lib = str(common.FAKE_LIB)
    model = tmp / "ssd_edgetpu.tflite"
    model.write_bytes(ssd_edgetpu_model())
    info = inspect_model(model)
    from edgetpud_plugins.detect import Detect, DetectConfig

    detect = Detect(DetectConfig(threshold=0.4, max_detections=20), info, None)
    stamps = Stamps()
    served = Served("frigate", ModelQueue("frigate", 8), info)
    get = served.queue.get

    def traced_get(timeout: float, *, idle: bool = True) -> Request | None:
        sent = getattr(stamps.local, "sent", None)
        if sent is not None:  # this lane's last reply left at G: what it did since
            stamps.after_reply.append((time.monotonic() - sent) * 1000.0)
            stamps.local.sent = None
        req = get(timeout, idle=idle)
        stamps.local.rid = req.id if req is not None else None
        if req is not None:
            stamps.mark(req.id, "C")
        return req

    served.queue.get = traced_get  # type: ignore[method-assign]
    port = ModelPort("frigate", lambda: served)
    submit = port.submit

    def traced_submit(request: Request) -> str:
        why = submit(request)
        if stamps.on:
            stamps.at[request.id]["A"] = request.received_mono
            client = request.meta["frigate"].client.client  # "pid N (uid U)"
            stamps.pid[request.id] = int(client.split()[1])
        stamps.mark(request.id, "B")
        return why

    port.submit = traced_submit  # type: ignore[method-assign]
    endpoint_addr = f"ipc://{tmp}/frigate.sock"
    endpoint = FrigateEndpoint(
        FrigateConfig(endpoint=endpoint_addr, model="frigate", request_timeout=0.2), port
    )
    on_result = endpoint._on_result

    def traced_result(result: Result) -> None:
        stamps.local.rid = result.request.id
        stamps.mark(result.request.id, "F")
        on_result(result)

    endpoint._on_result = traced_result  # type: ignore[method-assign]
    send = endpoint.router.send

    def traced_send(envelope: Any, payload: bytes, arrived: float = 0.0) -> None:
        send(envelope, payload, arrived)
        if arrived:
            stamps.current("G")
            stamps.local.sent = time.monotonic()

    endpoint.router.send = traced_send  # type: ignore[method-assign]
    invokes = bare_invoke_ms(model, devices[0], control.path, 300)  # before a host holds it
    pool = HostPool()
    try:
        for device in devices:
            worker = Worker(
                "frigate",
                device,
                served.queue,
                lambda device=device: traced_session(  # type: ignore[misc]
                    pool.open_session(device, model, info=info, library=lib), stamps
                ),
                make_preprocess("stretch"),
                lambda outputs, request, _info: detect.process(outputs, request),
                lambda result: result.request.reply(result),  # type: ignore[misc]
                lambda report: None,
                stall_timeout=5.0,
                interpreters=args.lanes,
            )
            served.workers[device] = worker
            worker.start()
        deadline = time.monotonic() + 60
        while any(w.state != "running" for w in served.workers.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            time.sleep(0.05)
        endpoint.start()
        floor = echo_floor(tmp, min(args.seconds, 5.0))
        stamps.on = True
        cpu0 = common.cpu_split_s(os.getpid())
        outs = run_clients(endpoint_addr, 2, args.seconds)
        cpu1 = common.cpu_split_s(os.getpid())
        stamps.on = False
    finally:
        endpoint.close()
        for worker in served.workers.values():
            worker.stop(time.monotonic() + 10)
        pool.close()
        bed.close()
    rtts = sorted(x for out in outs for x in out["rtt_ms"])
    rtt = statistics.median(rtts)
    invoke = statistics.median(invokes)
    rows = [[label, f"{ms:.3f}", n] for label, ms, n in stamps.medians()]
    in_process = stamps.medians()[-1][1]
    host = stamps.medians()[3][1]
    before, after = stamps.client_sides(outs)
    rows += [
        [
            "client's send until A (ZeroMQ in, the endpoint thread's wake-up)",
            f"{statistics.median(before):.3f}" if before else "-",
            len(before),
        ],
        [
            "G until the client has the reply (ZeroMQ out)",
            f"{statistics.median(after):.3f}" if after else "-",
            len(after),
        ],
        [
            "a lane after its reply is sent, until it waits for the next",
            f"{statistics.median(stamps.after_reply):.3f}" if stamps.after_reply else "-",
            len(stamps.after_reply),
        ],
        [
            "CPU per request, us: this process (endpoint, lanes) / hosts and clients",
            f"{(cpu1[0] - cpu0[0]) * 1e6 / len(rtts):.0f} / {(cpu1[1] - cpu0[1]) * 1e6 / len(rtts):.0f}",
            "",
        ],
        ["bare invoke (one device, in process, back to back)", f"{invoke:.3f}", len(invokes)],
        ["D..E less the bare invoke: the device host's own cost", f"{host - invoke:.3f}", ""],
        ["client round trip", f"{rtt:.3f}", len(rtts)],
        ["round trip less A..G: ZeroMQ, client, endpoint wake-up", f"{rtt - in_process:.3f}", ""],
        ["round trip less the bare invoke (added latency)", f"{rtt - invoke:.3f}", ""],
        ["bare REQ/REP echo, same sizes (floor)", f"{statistics.median(floor):.3f}", len(floor)],
        [
            "throughput /s (ceiling 2 / bare invoke)",
            f"{len(rtts) / args.seconds:.1f}",
            f"{2000 / invoke:.1f}",
        ],
    ]
    print(
        f"switch interval {sys.getswitchinterval() * 1000:g} ms, lanes {args.lanes}, load {os.getloadavg()[0]:.2f}"
    )
    print(common.table(["stage (p50, ms)", "ms", "n"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
