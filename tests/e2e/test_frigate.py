"""Frigate's zmq detector against the running daemon, as a Frigate user would see it.

`edgetpud run` as a subprocess with `[frigate]` on an ipc socket, a real mosquitto for
health and events, and clients written from Frigate's zmq_ipc.py (tests/support/
frigate.py: REQ socket, 200 ms timeout, two-frame requests, either reply form). What is
checked: the detections (TFLite's own TFLite_Detection_PostProcess op, on the CPU) are
those `edgetpud infer` prints for the same picture; several clients at once each get a
reply for every frame in time; an unplug, the loss of every Edge TPU (CPU fallback) and
a reload keep Frigate served; a model with no device answers at once; `edgetpud
status`, health and events count Frigate's requests per client.
"""

from __future__ import annotations

import json
import os
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
from PIL import Image

from tests.support.broker import Broker, Subscriber
from tests.support.daemon import Daemon, config_toml
from tests.support.fakelib import Control
from tests.support.frigate import FrigateClient, Reply, expected_rows
from tests.support.polling import wait_for
from tests.support.ssd_model import postprocess_model, ssd_edgetpu_model, zero_count_frame
from tests.support.umock import Testbed, in_mock_environment
from tests.support.umock import testbed as umock_testbed

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PREFIX, NODE = "frig", "box"
BASE = f"{PREFIX}/{NODE}"
WIDTH, HEIGHT = 64, 48
ANCHORS = [
    [0.1, 0.2, 0.5, 0.6],
    [0.12, 0.21, 0.5, 0.6],
    [0.25, 0.05, 0.75, 0.4],
    [0.6, 0.6, 0.9, 0.95],
]
CLASS_SCORES = [[0, 0.7, 0, 0], [0, 0.6, 0, 0], [0.91, 0, 0, 0], [0, 0, 0.05, 0]]
# what TFLite_Detection_PostProcess keeps (NMS drops anchor 1), over the detect threshold
KEPT = [(0, 0.91, ANCHORS[2]), (1, 0.7, ANCHORS[0])]
EXPECTED = expected_rows([k[2] for k in KEPT], [k[0] for k in KEPT], [k[1] for k in KEPT], 0.0)
TIMEOUT_MS = 200


def assert_detections(rows: np.ndarray, expected: np.ndarray = EXPECTED) -> None:
    np.testing.assert_array_equal(rows[:, :2], expected[:, :2])
    np.testing.assert_allclose(rows[:, 2:], expected[:, 2:], atol=0.06 / HEIGHT)


def config(tmp: Path, port: int, models: str, *, fake_lib: Path | None = None) -> str:
    return config_toml(
        node=NODE,
        state_dir=tmp / "state",
        port=port,
        prefix=PREFIX,
        library=fake_lib,
        daemon='drain_timeout = "5s"\nlog_level = "info"\n',
        devices='firmware_debounce = "300ms"\n',
        rest=f"""[frigate]
endpoint = "ipc://{tmp}/frigate.sock"
model = "doorcam"
request_timeout = "{TIMEOUT_MS}ms"
{models}""",
    )


def cpu_model_table(model: Path, threshold: float = 0.4) -> str:
    return f"""
[models.doorcam]
model = "{model}"
device = "cpu"
[models.doorcam.postprocess]
type = "detect"
threshold = {threshold}
"""


@dataclass
class Site:
    tmp: Path
    broker: Broker
    sub: Subscriber
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.tmp}/frigate.sock"

    def daemon(self, text: str, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(self.tmp / f"daemon{len(self.daemons)}", text, env=env)
        self.daemons.append(d)
        d.start().wait_ready(timeout=120)
        return d

    def health(self) -> dict[str, Any]:
        msgs = self.sub.on(f"{BASE}/health")
        return json.loads(msgs[-1].payload) if msgs else {}

    def events(self, kind: str) -> list[dict[str, Any]]:
        out = [json.loads(m.payload) for m in self.sub.on(f"{BASE}/events")]
        return [e for e in out if e.get("event") == kind]

    def model_state(self) -> str:
        return str(self.health().get("models", {}).get("doorcam", {}).get("state", ""))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    (tmp_path / "state").mkdir(exist_ok=True)
    with Broker(tmp_path, max_queued_messages=0) as broker:
        sub = Subscriber(broker, [f"{PREFIX}/#"]).start()
        s = Site(tmp_path, broker, sub)
        try:
            yield s
        finally:
            for d in s.daemons:
                d.close()
            sub.stop()


@pytest.fixture
def cpu_ssd(tmp_path: Path) -> Path:
    path = tmp_path / "ssd_postprocess.tflite"
    path.write_bytes(postprocess_model(ANCHORS, CLASS_SCORES, size=(WIDTH, HEIGHT)))
    return path


def picture(value: int = 90) -> np.ndarray:
    return np.full((1, HEIGHT, WIDTH, 3), value, np.uint8)


def test_frigate_gets_what_edgetpud_infer_sees_and_is_counted_per_client(
    site: Site, cpu_ssd: Path
) -> None:
    d = site.daemon(config(site.tmp, site.broker.port, cpu_model_table(cpu_ssd)))
    wait_for(lambda: site.model_state() == "running", 60, "doorcam running")
    client = FrigateClient(site.endpoint, timeout_ms=TIMEOUT_MS)
    try:
        assert client.handshake() == {"model_available": True, "model_loaded": True}
        frame = picture()
        reply = client.detect(frame)
    finally:
        client.close()
    assert reply.form == "one-frame"
    assert_detections(reply.rows)

    # the same picture through `edgetpud infer`: the same classes, scores and boxes
    png = site.tmp / "frame.png"
    Image.fromarray(frame[0]).save(png)
    done = subprocess.run(
        [sys.executable, "-m", "edgetpud", "infer", "--model", str(cpu_ssd), "--threshold",
         "0.4", str(png)],
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
    )  # fmt: skip
    [record] = [json.loads(line) for line in done.stdout.splitlines()]
    infer_rows = np.zeros((20, 6), np.float32)
    for i, det in enumerate(record["detections"]):
        box = det["box"]
        infer_rows[i] = [det["id"], det["score"], box["ymin"] / HEIGHT, box["xmin"] / WIDTH,
                         box["ymax"] / HEIGHT, box["xmax"] / WIDTH]  # fmt: skip
    assert_detections(reply.rows, infer_rows)

    # health, events and `edgetpud status` count it under this process
    me = f"pid {os.getpid()} (uid {os.getuid()})"
    wait_for(lambda: site.health().get("frigate", {}).get("answered") == 1, 30, "health counts")
    frigate = site.health()["frigate"]
    assert frigate["state"] == "listening" and frigate["model"] == "doorcam"
    assert me in frigate["clients"], frigate
    assert frigate["clients"][me]["answered"] == 1
    assert frigate["clients"][me]["detector_model"] == "ssd.tflite"
    assert [e["client"] for e in site.events("frigate_client")] == [me]
    status = subprocess.run(
        [sys.executable, "-m", "edgetpud", "status", "--config", str(d.config)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert any(me in line and "ssd.tflite" in line for line in status.stdout.splitlines())


def test_several_clients_at_once_each_get_a_reply_for_every_frame_in_time(
    site: Site, cpu_ssd: Path
) -> None:
    site.daemon(config(site.tmp, site.broker.port, cpu_model_table(cpu_ssd)))
    wait_for(lambda: site.model_state() == "running", 60, "doorcam running")
    clients = [FrigateClient(site.endpoint, timeout_ms=TIMEOUT_MS) for _ in range(4)]

    def run(client: FrigateClient) -> None:
        for i in range(40):
            client.detect(picture(i))

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for client in clients:
        client.close()
    replies = [r for c in clients for r in c.replies]
    assert len(replies) == 160
    late = [r for r in replies if r.form == "timeout"]
    assert not late, f"{len(late)} of 160 frames got no reply within {TIMEOUT_MS} ms"
    for reply in replies:
        assert_detections(reply.rows)


@dataclass
class Stream:
    """Clients sending frames back to back until stopped, every reply kept with its time."""

    endpoint: str
    count: int = 2
    stop: threading.Event = field(default_factory=threading.Event)
    replies: list[tuple[float, Reply]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Stream:
        for _ in range(self.count):
            t = threading.Thread(target=self._run)
            t.start()
            self.threads.append(t)
        return self

    def _run(self) -> None:
        client = FrigateClient(self.endpoint, timeout_ms=TIMEOUT_MS)
        frame = zero_count_frame((1, HEIGHT, WIDTH, 3))
        while not self.stop.is_set():
            reply = client.detect(frame)
            with self.lock:
                self.replies.append((time.monotonic(), reply))
            time.sleep(0.01)  # a camera's pace, not a flood
        client.close()

    def since(self, t0: float) -> list[Reply]:
        with self.lock:
            return [r for t, r in self.replies if t >= t0]

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.fixture
def tb() -> Iterator[Testbed]:
    if not in_mock_environment():
        pytest.skip("needs umockdev: run under umockdev-wrapper (make test does)")
    with umock_testbed() as bed:
        yield bed


def test_an_unplug_the_loss_of_every_tpu_and_a_reload_keep_frigate_served(
    site: Site, tb: Testbed, cpu_ssd: Path, fake_lib: Path
) -> None:
    control = Control(site.tmp / "fake-edgetpu.control")
    control.set(mode="simulate", invoke_ms=4)
    tpu_ssd = site.tmp / "ssd_edgetpu.tflite"
    tpu_ssd.write_bytes(ssd_edgetpu_model(size=(WIDTH, HEIGHT)))
    root = tb.add_root_hub(2, 5000, maxchild=4)
    first, second = tb.add_accelerator(root, 1), tb.add_accelerator(root, 2)

    def models(threshold: float) -> str:
        return f"""
[models.doorcam]
model = "{tpu_ssd}"
cpu_model = "{cpu_ssd}"
replicas = 2
[models.doorcam.postprocess]
type = "detect"
threshold = {threshold}
"""

    text = config(site.tmp, site.broker.port, models(0.4), fake_lib=fake_lib)
    d = site.daemon(text, env=control.env())

    def placed() -> list[str]:
        return list(site.health().get("models", {}).get("doorcam", {}).get("devices", []))

    wait_for(lambda: sorted(placed()) == ["usb:2-1", "usb:2-2"], 60, "doorcam on both TPUs")
    stream = Stream(site.endpoint).start()
    try:
        # on the simulated TPUs this frame's outputs hold no detections
        def answered() -> int:
            return int(site.health().get("frigate", {}).get("answered", 0))

        wait_for(lambda: answered() >= 40, 60, "40 frames answered by the TPUs")
        on_tpus = stream.since(0)
        assert all(r.form == "one-frame" and not r.rows.any() for r in on_tpus)

        # unplug one: the other serves; only frames on the unplugged device may time out
        t_unplug = time.monotonic()
        tb.unplug(first)
        wait_for(lambda: placed() == ["usb:2-2"], 30, "doorcam on usb:2-2 alone")
        wait_for(lambda: len(stream.since(t_unplug)) >= 40, 60, "frames after the unplug")
        lost = [r for r in stream.since(t_unplug) if r.form == "timeout"]
        assert len(lost) <= 4, f"{len(lost)} frames timed out across the unplug"

        # unplug the last: the CPU build serves, with TFLite's detection op's real output
        tb.unplug(second)
        wait_for(lambda: placed() == ["cpu"], 30, "doorcam on the CPU")
        t_cpu = time.monotonic()
        wait_for(lambda: len(stream.since(t_cpu)) >= 20, 60, "frames on the CPU")
        on_cpu = [r for r in stream.since(t_cpu) if r.form != "timeout"]
        assert len(on_cpu) >= 18
        for reply in on_cpu:
            assert_detections(reply.rows)

        # a reload that changes the model's threshold: served throughout, new answers after
        t_reload = time.monotonic()
        d.reload(config(site.tmp, site.broker.port, models(0.8), fake_lib=fake_lib))
        wait_for(lambda: len(d.said("READY=1")) >= 2, 60, "the reload applied")
        only_best = expected_rows([ANCHORS[2]], [0], [0.91], 0.0)

        def served_again() -> list[Reply]:
            after = stream.since(t_reload)
            first = next(
                (i for i, r in enumerate(after) if r.rows[1:].sum() == 0 and r.rows.any()), None
            )
            return after[first:] if first is not None else []

        # the restarted worker opens; until the latest snapshot shows it running, frames
        # get no detections at once (docs/frigate.md); from then on the new threshold
        wait_for(lambda: len(served_again()) >= 20, 60, "20 frames under the new threshold")
        # while the model restarts, a frame taken before the state shows it stopped may
        # wait past its timeout: at most a second's worth (5 per client at 200 ms)
        lost = [r for r in stream.since(t_reload) if r.form == "timeout"]
        assert len(lost) <= 10, f"{len(lost)} frames timed out across the reload"
        for reply in served_again():  # and from the first new answer on, every one
            assert reply.form == "one-frame"
            assert_detections(reply.rows, only_best)
    finally:
        stream.close()
    # the same endpoint all along: its count covers every frame of the test
    wait_for(
        lambda: site.health()["frigate"]["requests"] >= len(stream.replies), 10, "health counting"
    )
    assert site.health()["frigate"]["state"] == "listening"
    assert d.stop() == 0


def test_with_no_device_and_no_cpu_model_frigate_gets_no_detections_at_once(
    site: Site, tb: Testbed, fake_lib: Path
) -> None:
    control = Control(site.tmp / "fake-edgetpu.control")
    control.set(mode="simulate", invoke_ms=4)
    tpu_ssd = site.tmp / "ssd_edgetpu.tflite"
    tpu_ssd.write_bytes(ssd_edgetpu_model(size=(WIDTH, HEIGHT)))
    table = f"""
[models.doorcam]
model = "{tpu_ssd}"
[models.doorcam.postprocess]
type = "detect"
"""
    site.daemon(config(site.tmp, site.broker.port, table, fake_lib=fake_lib), env=control.env())
    wait_for(lambda: site.model_state() == "waiting", 60, "doorcam waiting for a device")
    client = FrigateClient(site.endpoint, timeout_ms=TIMEOUT_MS)
    try:
        replies = [client.detect(zero_count_frame((1, HEIGHT, WIDTH, 3))) for _ in range(5)]
    finally:
        client.close()
    assert [r.form for r in replies] == ["one-frame"] * 5
    assert not any(r.rows.any() for r in replies)
    assert max(r.seconds for r in replies) < TIMEOUT_MS / 1000
    wait_for(lambda: site.events("frigate_unavailable"), 30, "a frigate_unavailable event")
    assert "no device" in site.events("frigate_unavailable")[0]["reason"]
