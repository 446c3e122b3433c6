"""MQTT benchmarks against a real mosquitto (run from the repository root).

.venv/bin/python -m bench.bench_mqtt cpu [--count 10000] [--qos 0]
    CPU time of this process (all threads: caller, sender, paho's network thread)
    to publish COUNT results until paho has written them all. Target: < 1 s for
    10,000 results at QoS 0. A mosquitto_sub in another process counts deliveries.

.venv/bin/python -m bench.bench_mqtt outage [--seconds 20] [--count 5000]
    Kill the broker, produce COUNT results spread over SECONDS, restart it, and count
    what a persistent subscriber receives: lost, out of order, time to drain.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from edgetpud.config import MqttConfig
from edgetpud.messages import Request, Result, Timing
from edgetpud.mqtt import MqttLink
from tests.support.broker import Broker, Subscriber
from tests.support.polling import wait_for

NODE = "bench"
RESULTS = f"edgetpud/{NODE}/models/m/results"


def make_result(seq: int) -> Result:
    req = Request(model="m", payload=b"", kind="tensor", id=str(seq), source="bench")
    output = {
        "classes": [
            {"id": 3, "label": "goldfinch", "score": 0.87},
            {"id": 9, "label": "x", "score": 0.05},
        ]
    }
    return Result(req, "usb:2-1.3", output, timing=Timing(0.2, 1.1, 2.6, 0.1))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_cpu(count: int, qos: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp), max_queued_messages=0) as broker:
        sub = None
        if shutil.which("mosquitto_sub"):
            sub = subprocess.Popen(
                ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", RESULTS,
                 "-C", str(count), "-q", str(qos), "-W", "120"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)  # let it subscribe
        cfg = replace(MqttConfig(), host=broker.host, port=broker.port, qos=qos)
        link = MqttLink(cfg, NODE, on_request=lambda r: None)
        link.start()
        wait_for(lambda: link.stats().connected, what="connect")
        results = [make_result(i) for i in range(count)]
        base = link.stats().published
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        for r in results:
            link.publish_result(r)
        caller_wall = time.monotonic() - wall0
        wait_for(lambda: link.stats().published - base >= count, timeout=120, what="all published")
        cpu, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
        received = 0
        if sub is not None:
            out, _ = sub.communicate(timeout=120)
            received = len(out.splitlines())
        link.stop()
    return {
        "count": count,
        "qos": qos,
        "cpu_s": round(cpu, 3),
        "cpu_us_per_result": round(cpu / count * 1e6, 1),
        "caller_wall_s": round(caller_wall, 3),
        "wall_s": round(wall, 3),
        "received_by_subscriber": received,
    }


def bench_outage(seconds: float, count: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp), persistence=True, max_queued_messages=0).start()
        sub = Subscriber(
            broker, [RESULTS], protocol="3.1.1", client_id="bsub", persistent=True
        ).start()
        broker.restart()  # the subscriber's session is saved on this clean stop
        link = MqttLink(
            replace(MqttConfig(), host=broker.host, port=broker.port, qos=1),
            NODE,
            on_request=lambda r: None,
        )
        link.start()
        wait_for(lambda: link.stats().connected, what="connect")
        broker.kill()
        wait_for(lambda: not link.stats().connected, what="disconnect")
        t0 = time.monotonic()
        for seq in range(count):
            link.publish_result(make_result(seq))
            time.sleep(max(0.0, t0 + seconds * (seq + 1) / count - time.monotonic()))
        outage = time.monotonic() - t0
        backlog = link.stats().backlog
        broker.start()
        t1 = time.monotonic()
        wait_for(lambda: len(sub.on(RESULTS)) >= count, timeout=300, what="all results")
        drain = time.monotonic() - t1
        seqs = [int(json.loads(m.payload)["request_id"]) for m in sub.on(RESULTS)]
        link.stop()
        sub.stop()
        broker.stop()
    return {
        "produced": count,
        "outage_s": round(outage, 1),
        "backlog_at_restart": backlog,
        "received": len(seqs),
        "lost": len(set(range(count)) - set(seqs)),
        "in_order": int(seqs == sorted(seqs)),
        "drain_s_after_restart": round(drain, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("cpu")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--qos", type=int, default=0)
    p = sub.add_parser("outage")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    if args.what == "cpu":
        report = bench_cpu(args.count, args.qos)
        ok = report["cpu_s"] < 1.0
    else:
        report = bench_outage(args.seconds, args.count)
        ok = report["lost"] == 0 and report["in_order"] == 1
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
