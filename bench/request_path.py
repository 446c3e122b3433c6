#!/usr/bin/env python3
"""3. Request path over MQTT: requests in on `…/models/<m>/infer`, replies on a response topic.

One simulated Edge TPU (fake libedgetpu, 2.6 ms per invoke), `edgetpud run` serving one
model (mobilenet_v1_0.25_128 Edge TPU build, top-3 classify) with no source of its own.
A load generator in this process (bench/loadgen.py: MQTT 5 over a plain socket, so that it
adds as little as it can) publishes raw 128x128x3 uint8 tensors (49152 bytes, content type
application/octet-stream) at QoS 1 with a response topic and correlation data, and
timestamps each reply the moment it has read it.

- latency phase: requests paced at a steady rate well below capacity; figure: p50/p99 of
  (reply received - request sent - simulated invoke time), i.e. what edgetpud, paho and
  mosquitto add around the device. Also given: the same minus the invoke time the daemon
  measured for that request (the simulated device's own timer overshoot taken out).
- baseline: the same paced requests answered at once, with no inference, by
  bench/echo_responder.py, a bare paho client (what any paho-based responder costs here);
  it listens on its own topic base and the two paths take turns of 200 requests, so that
  both see the same moments of this machine's load. The figure edgetpud is judged by
  beside it: added p50 minus the echo's p50 (edgetpud's own share).
  bench/investigations/latency_floor.py runs this benchmark with the plain-socket
  responders that found the floor below the paho echo.
- throughput phase: a closed loop keeping `window` requests outstanding; replies/s.

    umockdev-wrapper .venv/bin/python -m bench.request_path [--quick]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

import numpy as np

from bench import common
from bench.loadgen import LoadGen
from tests.support.polling import wait_for

NAME = "request_path"
TARGET_P50_MS = 1.0
MODEL = "req"
# the echo baselines: name -> the module that answers and its options
ECHO_CLIENTS = {"paho": ["bench.echo_responder"]}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def paced(gen: LoadGen, prefix: str, payload: bytes, rate: float, count: int) -> list[float]:
    """Send `count` requests at `rate`/s; returns each round trip in ms."""
    due = time.monotonic()
    for i in range(count):
        gen.send(MODEL, f"{prefix}{i}", payload)
        due += 1.0 / rate
        time.sleep(max(0.0, due - time.monotonic()))
    ids = [f"{prefix}{i}" for i in range(count)]
    wait_for(lambda: all(i in gen.replies for i in ids), 60, "every paced reply")
    return [
        (gen.replies[f"{prefix}{i}"].received - gen.sent[f"{prefix}{i}"]) * 1000.0
        for i in range(count)
    ]


def start_echo(
    r: common.Rig, client: str, argv: list[str], payload: bytes
) -> tuple[subprocess.Popen[bytes], LoadGen]:
    """The echo responder `argv` (a module and its options) on its own topic base, and a
    load generator for it."""
    base = f"bench/echo-{client}"
    echo = subprocess.Popen(
        [*common.module(argv[0]), *argv[1:], "--port", str(r.broker.port), "--base", base],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=common.ROOT,
    )  # fmt: skip
    gen = LoadGen(r.broker.host, r.broker.port, base, f"echo-{client}")

    def echo_ready() -> bool:
        gen.send(MODEL, f"ew{len(gen.sent)}", payload)
        time.sleep(0.2)
        return gen.answered() > 0

    wait_for(echo_ready, 60, f"the {client} echo responder")
    return echo, gen


def run(
    quick: bool = False, echoes: dict[str, list[str]] | None = None, name: str = NAME
) -> dict[str, Any]:
    """The benchmark, with the echo responders `echoes` (ECHO_CLIENTS by default) taking
    turns with edgetpud; writes bench/results/<name>.json."""
    echoes = echoes or ECHO_CLIENTS
    rate, count = (100.0, 200) if quick else (100.0, 2000)
    blocks = 1 if quick else 10
    window, seconds = 16, (2.0 if quick else 8.0)
    record = common.new_record(
        name,
        quick,
        {
            "simulated_invoke_ms": common.INVOKE_MS,
            "model": common.MODEL_128,
            "request": "raw 128x128x3 uint8 tensor, 49152 bytes, MQTT 5, QoS 1, response topic",
            "reply_qos": 1,
            "latency_phase": {"rate_per_s": rate, "requests": count, "turns": blocks},
            "throughput_phase": {"window": window, "seconds": seconds},
        },
    )
    payload = np.random.default_rng(0).integers(0, 256, 128 * 128 * 3, dtype=np.uint8).tobytes()
    with common.rig(common.INVOKE_MS) as r, ExitStack() as stack:
        (device,) = r.add_accelerators(1)
        gens: dict[str, LoadGen] = {}
        for kind, argv in echoes.items():
            proc, gens[kind] = start_echo(r, kind, argv, payload)
            stack.callback(proc.wait, 30)
            stack.callback(proc.terminate)
            stack.callback(gens[kind].stop)
        models = common.model_table(
            MODEL, common.MODEL_128, device=device, extra="queue_size = 64\n"
        )
        r.daemon(models, qos=1)
        gen = gens["edgetpud"] = LoadGen(r.broker.host, r.broker.port, common.BASE)
        stack.callback(gen.stop)
        for i in range(20):  # warm up: the first requests open the path end to end
            gen.send(MODEL, f"w{i}", payload)
        wait_for(lambda: gen.answered() >= 20, 60, "warm-up replies")
        # the paths in turns of count/blocks requests, so each sees the same moments
        rtts: dict[str, list[float]] = {kind: [] for kind in gens}
        ids: list[str] = []
        order = list(gens)
        for block in range(blocks):
            turn = block % len(order)
            for kind in order[turn:] + order[:turn]:
                prefix = f"l{block}-" if kind == "edgetpud" else f"e{block}-"
                rtts[kind] += paced(gens[kind], prefix, payload, rate, count // blocks)
            ids += [f"l{block}-{i}" for i in range(count // blocks)]
        echo = {kind: rtts[kind] for kind in echoes}
        rtt = rtts["edgetpud"]
        lat = [gen.replies[i] for i in ids]
        added = [x - common.INVOKE_MS for x in rtt]
        added_measured = [x - y.timing.get("invoke_ms", common.INVOKE_MS) for x, y in zip(rtt, lat)]
        errors = sum(1 for x in lat if x.error)
        legs = {
            "in_ms (sent -> daemon received_at)": [
                (x.daemon_received - x.sent) * 1000.0 for x in lat
            ],
            "daemon_ms (received_at -> finished_at)": [
                (x.daemon_finished - x.daemon_received) * 1000.0 for x in lat
            ],
            "out_ms (finished_at -> reply received)": [
                (x.received - x.daemon_finished) * 1000.0 for x in lat
            ],
        }
        inside = {
            k: statistics.median(x.timing.get(k, 0.0) for x in lat)
            for k in ("queue_ms", "preprocess_ms", "invoke_ms", "postprocess_ms")
        }
        # throughput phase: closed loop, `window` outstanding
        n, t_end = 0, time.monotonic() + seconds
        start_answered, t0 = gen.answered(), time.time()
        while time.monotonic() < t_end:
            if gen.outstanding() < window:
                gen.send(MODEL, f"t{n}", payload)
                n += 1
            else:
                time.sleep(0.0005)
        t1 = time.time()
        throughput = (gen.answered() - start_answered) / (t1 - t0)
        wait_for(lambda: gen.outstanding() == 0, 60, "every throughput-phase reply")
        duplicates = gen.duplicates
    echo_p50 = percentile(echo["paho"], 0.50)
    fig = {
        "latency_requests": count,
        "errors": errors,
        "added_ms_p50": round(percentile(added, 0.50), 3),
        "added_ms_p90": round(percentile(added, 0.90), 3),
        "added_ms_p99": round(percentile(added, 0.99), 3),
        "added_minus_measured_invoke_ms_p50": round(percentile(added_measured, 0.50), 3),
        "round_trip_ms_p50": round(percentile(added, 0.50) + common.INVOKE_MS, 3),
        "daemon_timing_median_ms": {k: round(v, 3) for k, v in inside.items()},
        "legs_median_ms": {k: round(percentile(v, 0.5), 3) for k, v in legs.items()},
        "throughput_per_s": round(throughput, 1),
        "ceiling_per_s": round(1000.0 / common.INVOKE_MS, 1),
        "duplicates": duplicates,
        "echo_round_trip_ms_p50": round(echo_p50, 3),
        "echo_round_trip_ms_p99": round(percentile(echo["paho"], 0.99), 3),
        "added_over_echo_ms_p50": round(percentile(added, 0.50) - echo_p50, 3),
    }
    for kind, rtt_ms in echo.items():  # the floor's responders, when run (latency_floor)
        if kind != "paho":
            fig[f"{kind}_round_trip_ms_p50"] = round(percentile(rtt_ms, 0.50), 3)
            fig[f"{kind}_round_trip_ms_p99"] = round(percentile(rtt_ms, 0.99), 3)
            fig[f"{kind}_added_ms_p50"] = round(percentile(rtt_ms, 0.50) - common.INVOKE_MS, 3)
    record["figures"] = fig
    record["target"] = {
        "added_p50_ms_max": TARGET_P50_MS,
        "measured": fig["added_ms_p50"],
        "met": fig["added_ms_p50"] <= TARGET_P50_MS,
    }
    record["table"] = common.table(
        ["figure", "value"],
        [
            ["added latency p50 (ms)", fig["added_ms_p50"]],
            ["added latency p99 (ms)", fig["added_ms_p99"]],
            ["round trip p50 (ms, incl. 2.6 ms invoke)", fig["round_trip_ms_p50"]],
            [
                "bare paho echo round trip p50 / p99 (ms)",
                f"{fig['echo_round_trip_ms_p50']} / {fig['echo_round_trip_ms_p99']}",
            ],
            *[
                [
                    f"{kind} echo round trip p50 / p99 (ms)",
                    f"{fig[f'{kind}_round_trip_ms_p50']} / {fig[f'{kind}_round_trip_ms_p99']}",
                ]
                for kind in echo
                if kind != "paho"
            ],
            ["added p50 minus paho echo p50 (ms)", fig["added_over_echo_ms_p50"]],
            [
                "added p50, measured invoke subtracted (ms)",
                fig["added_minus_measured_invoke_ms_p50"],
            ],
            ["throughput, window 16 (replies/s)", fig["throughput_per_s"]],
            ["errors / duplicates", f"{errors} / {duplicates}"],
        ],
    )
    print(record["table"])
    common.write_record(name, record)
    return record


if __name__ == "__main__":
    sys.exit(common.main(__doc__, run))
