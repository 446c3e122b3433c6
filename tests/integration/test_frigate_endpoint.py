"""The Frigate endpoint on its own: a real ROUTER socket, a real model queue and real
workers (the TFLite CPU kernels, or simulated Edge TPUs through the fake libedgetpu),
driven by a client written from Frigate's protocol (tests/support/frigate.py).
The daemon-level tests are tests/e2e/test_frigate.py."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgetpud_plugins.detect import Detect, DetectConfig

from edgetpud.config import FrigateConfig
from edgetpud.frigate import FrigateEndpoint, FrigateError, ModelPort
from edgetpud.messages import Result
from edgetpud.modelfile import inspect_model
from edgetpud.preprocess import make_preprocess
from edgetpud.runtime import open_session
from edgetpud.workers import ModelQueue, Worker
from tests.support.fakelib import Accelerators, Control, FakeLib, make_control
from tests.support.frigate import FrigateClient, expected_rows
from tests.support.polling import wait_for
from tests.support.ssd_model import postprocess_model, ssd_edgetpu_model, zero_count_frame
from tests.support.workers import Collector, lanes_alive

WIDTH, HEIGHT = 64, 48
# Four anchors into TFLite's own TFLite_Detection_PostProcess (tests/support/ssd_model.py):
# the second overlaps the first (IoU 0.9) with a lower score, so non-maximum suppression
# removes it; the last scores under the op's 0.1; the detect plugin's threshold is 0.4.
ANCHORS = [
    [0.1, 0.2, 0.5, 0.6],
    [0.12, 0.21, 0.5, 0.6],
    [0.25, 0.05, 0.75, 0.4],
    [0.6, 0.6, 0.9, 0.95],
]
CLASS_SCORES = [[0, 0.7, 0, 0], [0, 0.6, 0, 0], [0.91, 0, 0, 0], [0, 0, 0.05, 0]]
THRESHOLD = 0.4
# what survives, best first: (class, score, box)
KEPT = [(0, 0.91, ANCHORS[2]), (1, 0.7, ANCHORS[0])]


@dataclass
class Served:
    """The daemon's ModelRuntime, reduced to what the port reads."""

    name: str
    queue: ModelQueue
    info: Any
    workers: dict[str, Worker] = field(default_factory=dict)
    disabled: str = ""


class Rig:
    """A model, its queue, workers that answer through each request's reply, an endpoint."""

    def __init__(self, model: Path, endpoint: str, *, poll_ms: int = 100, **frigate: Any) -> None:
        info = inspect_model(model)
        self.model = model
        self.served = Served("doorcam", ModelQueue("doorcam", 32), info)
        self.detect = Detect(DetectConfig(threshold=THRESHOLD, max_detections=25), info, None)
        self.sink = Collector()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.cfg = FrigateConfig(endpoint=endpoint, model="doorcam", **frigate)
        self.endpoint = FrigateEndpoint(
            self.cfg,
            ModelPort("doorcam", lambda: self.served),
            on_event=lambda kind, fields: self.events.append((kind, dict(fields))),
            poll_ms=poll_ms,
        )

    def on_result(self, result: Result) -> None:
        self.sink.on_result(result)
        assert result.request.reply is not None
        result.request.reply(result)

    def add_worker(self, device: str, *, library: str = "", lanes: int = 1) -> Worker:
        def opener() -> Any:
            return open_session(self.model, device, library=library or None, cpu_threads=1)

        worker = Worker(
            "doorcam",
            device,
            self.served.queue,
            opener,
            make_preprocess("stretch"),
            lambda outputs, request, info: self.detect.process(outputs, request),
            self.on_result,
            self.sink.on_report,
            stall_timeout=60,
            interpreters=lanes,
        )
        self.served.workers[device] = worker
        worker.start()
        wait_for(lambda: worker.state == "running", what=f"the worker on {device} to run")
        return worker

    def close(self) -> None:
        self.endpoint.close()
        for worker in self.served.workers.values():
            worker.stop(time.monotonic() + 30)
        wait_for(lambda: not lanes_alive(), what="the lanes to end")


@pytest.fixture
def ssd(tmp_path: Path) -> Path:
    path = tmp_path / "ssd.tflite"
    path.write_bytes(postprocess_model(ANCHORS, CLASS_SCORES, size=(WIDTH, HEIGHT)))
    return path


@pytest.fixture
def rig(ssd: Path, tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(ssd, f"ipc://{tmp_path}/frigate.sock")
    yield rig
    rig.close()


def frame(value: int = 0, shape: tuple[int, ...] = (1, HEIGHT, WIDTH, 3)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


EXPECTED = expected_rows([k[2] for k in KEPT], [k[0] for k in KEPT], [k[1] for k in KEPT], 0.0)


def assert_detections(rows: np.ndarray) -> None:
    """Classes and scores exact, boxes within the 0.1-pixel rounding of the detect plugin."""
    np.testing.assert_array_equal(rows[:, :2], EXPECTED[:, :2])
    np.testing.assert_allclose(rows[:, 2:], EXPECTED[:, 2:], atol=0.06 / HEIGHT)


def test_frigate_gets_the_models_detections_as_its_20x6_rows(rig: Rig) -> None:
    rig.add_worker("cpu")
    rig.endpoint.start()
    client = FrigateClient(rig.cfg.endpoint, timeout_ms=2000)
    try:
        assert client.handshake() == {"model_available": True, "model_loaded": True}
        reply = client.detect(frame(7))
        assert reply.form in ("one-frame", "two-frame")
        assert_detections(reply.rows)
        assert reply.rows[2:].sum() == 0  # suppressed, under the thresholds, or unused
    finally:
        client.close()
    health = rig.endpoint.snapshot()
    assert (health["state"], health["requests"], health["answered"]) == ("listening", 1, 1)
    # where its time went: waiting for a worker, and from the result to the reply
    assert 0 < health["queue_p50_ms"] + health["reply_p50_ms"] < health["in_daemon_p50_ms"]
    [seen] = health["clients"].values()
    assert seen["detector_model"] == "ssd.tflite"
    assert seen["answered"] == 1


def test_several_clients_at_once_each_get_every_answer_in_time(rig: Rig) -> None:
    rig.add_worker("cpu")
    rig.endpoint.start()
    clients = [FrigateClient(rig.cfg.endpoint, timeout_ms=1000) for _ in range(4)]
    per_client = 25

    def run(client: FrigateClient) -> None:
        for i in range(per_client):
            client.detect(frame(i))

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        for client in clients:
            assert client.timeouts == 0
            assert len(client.replies) == per_client
            for reply in client.replies:
                assert_detections(reply.rows)
    finally:
        for client in clients:
            client.close()
    assert rig.endpoint.snapshot()["answered"] == 4 * per_client


def test_a_frame_of_the_wrong_shape_gets_no_detections_at_once_and_a_log_line(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.add_worker("cpu")
    rig.endpoint.start()
    client = FrigateClient(rig.cfg.endpoint, timeout_ms=2000)
    try:
        with caplog.at_level(logging.WARNING, logger="edgetpud.frigate"):
            reply = client.detect(frame(shape=(1, 320, 320, 3)))
        assert reply.form != "timeout"
        assert not reply.rows.any()
        assert reply.seconds < rig.cfg.request_timeout
        [line] = [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("edgetpud.frigate") and r.levelno >= logging.WARNING
        ]
        assert "[1, 320, 320, 3]" in line and f"[1, {HEIGHT}, {WIDTH}, 3]" in line
        assert f"{WIDTH}x{HEIGHT}" in line  # what to set in Frigate
        assert_detections(client.detect(frame(1)).rows)  # the next right frame is served
    finally:
        client.close()
    health = rig.endpoint.snapshot()
    assert (health["mismatched"], health["empty"], health["answered"]) == (1, 1, 1)
    assert rig.sink.results and len(rig.sink.results) == 1  # the bad frame never reached a worker


HOSTILE = [
    ({"shape": [1, -48, -64, 3], "dtype": "uint8"}, 48 * 64 * 3),  # negative dims, right size
    ({"shape": [], "dtype": "uint8"}, 1),
    ({"shape": [1, HEIGHT, WIDTH, 3], "dtype": "object"}, HEIGHT * WIDTH * 3 * 8),
    ({"shape": [1, HEIGHT, WIDTH, 3], "dtype": "no-such-type"}, HEIGHT * WIDTH * 3),
    ({"shape": "1x48x64x3", "dtype": "uint8"}, HEIGHT * WIDTH * 3),
    ({"dtype": "uint8"}, HEIGHT * WIDTH * 3),
    ({"shape": [1, HEIGHT, WIDTH, 3], "dtype": "uint8"}, 5),  # fewer bytes than it says
    (["not", "a", "header"], 10),
]


@pytest.mark.parametrize(("header", "size"), HOSTILE, ids=[str(h)[:40] for h, _ in HOSTILE])
def test_a_hostile_request_gets_no_detections_at_once_and_the_next_is_served(
    rig: Rig, header: Any, size: int
) -> None:
    import zmq

    rig.add_worker("cpu")
    rig.endpoint.start()
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 2000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(rig.cfg.endpoint)
    try:
        sock.send_multipart([json.dumps(header).encode(), bytes(size)])
        assert sock.recv_multipart() == [bytes(480)]
    finally:
        sock.close(0)
    client = FrigateClient(rig.cfg.endpoint, timeout_ms=2000)
    try:
        assert_detections(client.detect(frame()).rows)
    finally:
        client.close()
    assert rig.endpoint.snapshot()["empty"] == 1


def test_negative_dimensions_get_no_detections_in_resize_mode_too(
    ssd: Path, tmp_path: Path
) -> None:
    import zmq

    rig = Rig(ssd, f"ipc://{tmp_path}/frigate.sock", on_mismatch="resize")
    try:
        rig.add_worker("cpu")
        rig.endpoint.start()
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.RCVTIMEO, 2000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(rig.cfg.endpoint)
        header = {"shape": [1, -30, -20, 3], "dtype": "uint8"}
        sock.send_multipart([json.dumps(header).encode(), bytes(30 * 20 * 3)])
        assert sock.recv_multipart() == [bytes(480)]
        sock.close(0)
    finally:
        rig.close()


def test_a_message_over_the_size_limit_drops_only_its_own_connection(rig: Rig) -> None:
    from edgetpud.frigate.router import MAX_MESSAGE_BYTES

    rig.add_worker("cpu")
    rig.endpoint.start()
    big = FrigateClient(rig.cfg.endpoint, timeout_ms=1000)
    client = FrigateClient(rig.cfg.endpoint, timeout_ms=2000)
    try:
        huge = np.zeros(MAX_MESSAGE_BYTES + 1, np.uint8)
        assert big.detect(huge).form == "timeout"  # its connection was dropped
        assert_detections(client.detect(frame()).rows)
    finally:
        big.close()
        client.close()


def test_resize_mode_stretches_a_frame_of_another_size_and_keeps_boxes_normalised(
    ssd: Path, tmp_path: Path
) -> None:
    rig = Rig(ssd, f"ipc://{tmp_path}/frigate.sock", on_mismatch="resize")
    try:
        rig.add_worker("cpu")
        rig.endpoint.start()
        client = FrigateClient(rig.cfg.endpoint, timeout_ms=2000)
        reply = client.detect(frame(shape=(1, 300, 200, 3)))
        client.close()
        np.testing.assert_array_equal(reply.rows[:, :2], EXPECTED[:, :2])
        # boxes stretched back onto a 200x300 frame: still the same fractions of it
        np.testing.assert_allclose(reply.rows[:, 2:], EXPECTED[:, 2:], atol=0.06 / 200)
    finally:
        rig.close()


def test_with_no_device_every_request_gets_no_detections_at_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.endpoint.start()  # no worker: no Edge TPU and no cpu_model
    client = FrigateClient(rig.cfg.endpoint, timeout_ms=2000)
    try:
        with caplog.at_level(logging.WARNING, logger="edgetpud.frigate"):
            replies = [client.detect(frame()) for _ in range(5)]
        assert all(r.form != "timeout" and not r.rows.any() for r in replies)
        assert max(r.seconds for r in replies) < rig.cfg.request_timeout
        assert rig.served.queue.depth == 0  # nothing left waiting for a device
        assert any("no device to run on" in r.getMessage() for r in caplog.records)
        rig.add_worker("cpu")  # a device comes back: served again
        assert_detections(client.detect(frame()).rows)
    finally:
        client.close()
    kinds = [kind for kind, _ in rig.events]
    assert kinds.index("frigate_unavailable") < kinds.index("frigate_available")
    health = rig.endpoint.snapshot()
    assert (health["empty"], health["answered"], health["unavailable"]) == (5, 1, "")


def test_clients_are_counted_apart_by_process(rig: Rig) -> None:
    rig.add_worker("cpu")
    rig.endpoint.start()
    client = FrigateClient(rig.cfg.endpoint, timeout_ms=2000)
    script = (
        "import sys, numpy as np\n"
        "from tests.support.frigate import FrigateClient\n"
        "c = FrigateClient(sys.argv[1], timeout_ms=5000)\n"
        f"r = [c.detect(np.zeros((1, {HEIGHT}, {WIDTH}, 3), np.uint8)) for _ in range(3)]\n"
        "assert all(x.form != 'timeout' for x in r)\n"
    )
    try:
        client.detect(frame())
        other = subprocess.run(
            [sys.executable, "-c", script, rig.cfg.endpoint],
            check=False,
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert other.returncode == 0, other.stderr
    finally:
        client.close()
    clients = {name: c["requests"] for name, c in rig.endpoint.snapshot()["clients"].items()}
    assert sorted(clients.values()) == [1, 3]
    assert all(name.startswith("pid ") for name in clients)
    assert [k for k, _ in rig.events].count("frigate_client") >= 1


def test_an_endpoint_that_cannot_listen_says_what_to_do(rig: Rig) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = FrigateEndpoint(
        FrigateConfig(endpoint=f"tcp://127.0.0.1:{port}", model="doorcam"), rig.endpoint.port
    )
    first.start()
    second = FrigateEndpoint(first.cfg, rig.endpoint.port)
    try:
        with pytest.raises(
            FrigateError, match=f"cannot listen on tcp://127.0.0.1:{port}: .*already"
        ):
            second.start()
        assert second.snapshot()["state"] == "failed"
    finally:
        first.close()
    missing = FrigateEndpoint(
        FrigateConfig(endpoint="ipc:///nonexistent-dir/f.sock", model="doorcam"),
        rig.endpoint.port,
    )
    with pytest.raises(FrigateError, match="/nonexistent-dir does not exist; create it"):
        missing.start()


# -- simulated Edge TPUs: replicas, and requests whose client has given up ---------------------


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Control:
    return make_control(tmp_path, monkeypatch, mode="simulate", invoke_ms=5)


@pytest.fixture
def tpu_rig(tmp_path: Path) -> Iterator[Rig]:
    """The rig with an Edge TPU build of an SSD (tests/support/ssd_model.py): what the
    simulated Edge TPUs run; its frames come from zero_count_frame (no detections)."""
    model = tmp_path / "ssd_edgetpu.tflite"
    model.write_bytes(ssd_edgetpu_model(size=(WIDTH, HEIGHT)))
    rig = Rig(model, f"ipc://{tmp_path}/frigate.sock", request_timeout=0.1)
    yield rig
    rig.close()


def test_requests_spread_over_every_replica(
    tpu_rig: Rig, bed: Accelerators, lib: FakeLib, control: Control
) -> None:
    rig = tpu_rig
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    for device in ("usb:2-1", "usb:2-2"):
        rig.add_worker(device, library=str(lib.path), lanes=2)
    rig.endpoint.start()
    clients = [FrigateClient(rig.cfg.endpoint, timeout_ms=2000) for _ in range(4)]
    blank = zero_count_frame((1, HEIGHT, WIDTH, 3))

    def run(client: FrigateClient) -> None:
        for _ in range(20):
            assert client.detect(blank).form == "one-frame"

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for client in clients:
        client.close()
    assert sum(c.timeouts for c in clients) == 0
    assert lib.invokes("2-1") + lib.invokes("2-2") == 80
    assert min(lib.invokes("2-1"), lib.invokes("2-2")) >= 10  # both devices took a share


def test_every_reply_wakes_the_endpoint(
    tmp_path: Path, bed: Accelerators, lib: FakeLib, control: Control
) -> None:
    """Replies leave from worker threads while the endpoint's thread waits on the socket;
    neither may strand the other: a reply must leave at once, and a request that came
    while a worker sent (its send can take the socket's signal) must still be read. With
    the idle wait stretched to 60 s, either would leave a client waiting past its
    timeout (this found a lost wake-up when replies still went through the endpoint's
    thread: about one reply in four waited for the idle poll)."""
    model = tmp_path / "ssd_edgetpu.tflite"
    model.write_bytes(ssd_edgetpu_model(size=(WIDTH, HEIGHT)))
    rig = Rig(model, f"ipc://{tmp_path}/frigate.sock", poll_ms=60_000)
    try:
        bed.add_usb("2-1")
        bed.add_usb("2-2")
        for device in ("usb:2-1", "usb:2-2"):
            rig.add_worker(device, library=str(lib.path), lanes=1)
        rig.endpoint.start()
        clients = [FrigateClient(rig.cfg.endpoint, timeout_ms=2000) for _ in range(2)]
        blank = zero_count_frame((1, HEIGHT, WIDTH, 3))

        def run(client: FrigateClient) -> None:
            for _ in range(150):
                if client.detect(blank).form == "timeout":
                    return

        threads = [threading.Thread(target=run, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        for client in clients:
            client.close()
        assert [c.timeouts for c in clients] == [0, 0]
        assert [len(c.replies) for c in clients] == [150, 150]
    finally:
        rig.close()


def test_a_request_whose_client_gave_up_is_dropped_not_served_late(
    tpu_rig: Rig, bed: Accelerators, lib: FakeLib, control: Control
) -> None:
    rig = tpu_rig
    bed.add_usb("2-1")
    control.set(invoke_ms=150)
    blank = zero_count_frame((1, HEIGHT, WIDTH, 3))
    rig.add_worker("usb:2-1", library=str(lib.path))
    rig.endpoint.start()
    # three clients at once: one invoke runs 150 ms, so two requests wait past 100 ms
    clients = [FrigateClient(rig.cfg.endpoint, timeout_ms=100) for _ in range(3)]
    threads = [threading.Thread(target=c.detect, args=(blank,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wait_for(lambda: len(rig.sink.results) == 3, what="all three requests to be settled")
    for client in clients:
        client.close()
    expired = [r for r in rig.sink.results if r.expired]
    assert len(expired) >= 1  # taken by the worker after the deadline: never run
    assert lib.invokes("2-1") == 3 - len(expired)
    health = rig.endpoint.snapshot()
    assert health["expired"] == 3 - health["answered"]


def test_reply_forms_of_the_protocol_client(rig: Rig) -> None:
    """The test client itself takes the two-frame form too (Frigate accepts both)."""
    import zmq

    ctx = zmq.Context.instance()
    server = ctx.socket(zmq.REP)
    endpoint = rig.cfg.endpoint + ".rep"
    server.bind(endpoint)
    client = FrigateClient(endpoint, timeout_ms=2000)
    try:
        done = threading.Thread(
            target=lambda: (
                server.recv_multipart(),
                server.send_multipart(
                    [
                        json.dumps({"shape": [20, 6], "dtype": "float32"}).encode(),
                        EXPECTED.tobytes(),
                    ]
                ),
            )
        )
        done.start()
        reply = client.detect(frame())
        done.join(10)
        assert reply.form == "two-frame"
        np.testing.assert_array_equal(reply.rows, EXPECTED)
    finally:
        client.close()
        server.close(0)
