#!/usr/bin/env python3
"""The two ends bench/frigate.py runs as processes of their own.

`client ENDPOINT SECONDS`: a Frigate zmq detector as Frigate's zmq_ipc.py is written
(tests/support/frigate.py: REQ socket, request_timeout_ms, a JSON header and a
1x300x300x3 uint8 tensor per frame), sending frames back to back for SECONDS after a
start time given on stdin; prints one JSON object: its pid, each round trip in ms and
(time.monotonic) span, the reply forms, timeouts.

`echo ENDPOINT`: the floor: a REP socket that answers every two-frame request at once
with a 480-byte frame (no inference, no queue, no thread hand-off), until stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import zmq

from tests.support.frigate import FrigateClient
from tests.support.ssd_model import zero_count_frame

SHAPE = (1, 300, 300, 3)
REPLY = bytes(480)
HANDSHAKE = json.dumps({"model_available": True, "model_loaded": True}).encode()


def client(endpoint: str, seconds: float, timeout_ms: int, gap_ms: float = 0.0) -> None:
    frame = zero_count_frame(SHAPE)
    peer = FrigateClient(endpoint, timeout_ms=timeout_ms)
    peer.handshake()
    for _ in range(20):  # warm up: connection, first allocations
        peer.detect(frame)
    start = float(sys.stdin.readline())  # the same instant for every client
    time.sleep(max(0.0, start - time.time()))
    peer.replies.clear()
    peer.timeouts = 0
    sent: list[float] = []
    spans: list[tuple[float, float]] = []  # time.monotonic() around each frame (one clock
    end = time.monotonic() + seconds  # for every process: bench/investigations/frigate_path.py)
    while time.monotonic() < end:
        sent.append(time.time())
        t0 = time.monotonic()
        peer.detect(frame)
        spans.append((t0, time.monotonic()))
        if gap_ms:  # idle between frames, as while a device runs the invoke
            time.sleep(gap_ms / 1000.0)
    peer.close()
    out = {
        "pid": os.getpid(),
        "rtt_ms": [round(r.seconds * 1000.0, 4) for r in peer.replies],
        "spans": spans,
        "sent": sent,
        "forms": sorted({r.form for r in peer.replies}),
        "timeouts": peer.timeouts,
        "seconds": seconds,
    }
    sys.stdout.write(json.dumps(out) + "\n")


def echo(endpoint: str) -> None:
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while not done.is_set():
        if sock.poll(100):
            frames = sock.recv_multipart(copy=False)
            sock.send(REPLY if len(frames) > 1 else HANDSHAKE)
    sock.close(0)


if __name__ == "__main__":
    if sys.argv[1] == "client":
        timeout_ms = int(sys.argv[4]) if len(sys.argv) > 4 else 200
        client(
            sys.argv[2],
            float(sys.argv[3]),
            timeout_ms,
            float(sys.argv[5]) if len(sys.argv) > 5 else 0,
        )
    else:
        echo(sys.argv[2])
