"""The daemon end to end: a subprocess under umockdev, the fake libedgetpu, a real mosquitto.

What an admin and an MQTT subscriber would check: systemd hears READY=1 and the
watchdog, models land where the plan says, hotplug moves only what it concerns,
a hung device is detected and its model served elsewhere, reloads apply only the
difference, and no request is lost through any of it.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.broker import Broker, Subscriber
from tests.support.daemon import Daemon, config_toml
from tests.support.fakelib import Control
from tests.support.polling import wait_for
from tests.support.umock import Testbed, in_mock_environment
from tests.support.umock import testbed as umock_testbed

pytestmark = pytest.mark.e2e

PREFIX = "e2e"
NODE = "box"
BASE = f"{PREFIX}/{NODE}"


def small_png(seed: int = 0) -> bytes:
    """A 64x64 image: cheap to send in bulk, decoded and resized like any camera frame."""
    img = Image.new("RGB", (64, 64), ((seed * 37) % 256, (seed * 91) % 256, 128))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def config_text(
    tmp: Path, port: int, models_dir: Path, fake_lib: Path, *, models: str, extra: str = ""
) -> str:
    return config_toml(
        node=NODE,
        state_dir=tmp / "state",
        port=port,
        prefix=PREFIX,
        library=fake_lib,
        daemon='stall_timeout = "1500ms"\ndrain_timeout = "10s"\nlog_level = "info"\n',
        devices='firmware_debounce = "2s"\nquarantine_backoff = "60s"\n',
        rest=f"{extra}\n{models.format(m=models_dir)}",
    )


THREE_MODELS = """
[models.alpha]
model = "{m}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
cpu_model = "{m}/mobilenet_v1_0.25_128_quant.tflite"
labels = "{m}/imagenet_labels.txt"
priority = 90
queue_size = 1000
[models.alpha.postprocess]
type = "classify"
top_k = 1
[models.beta]
model = "{m}/mobilenet_v1_0.5_160_quant_edgetpu.tflite"
cpu_model = "{m}/mobilenet_v1_0.5_160_quant.tflite"
labels = "{m}/imagenet_labels.txt"
priority = 50
queue_size = 1000
[models.beta.postprocess]
type = "classify"
top_k = 1
[models.gamma]
model = "{m}/mobilenet_v1_0.25_128_quant_cocompiled_with_mobilenet_v1_0.5_160_quant_edgetpu.tflite"
priority = 10
queue_size = 1000
"""


@dataclass
class Rig:
    """Everything one end-to-end test drives."""

    tmp: Path
    tb: Testbed
    broker: Broker
    control: Control
    models_dir: Path
    fake_lib: Path
    sub: Subscriber
    daemons: list[Daemon] = field(default_factory=list)
    root: str = ""

    def daemon(self, models: str = THREE_MODELS, extra: str = "", **kw: Any) -> Daemon:
        text = config_text(
            self.tmp, self.broker.port, self.models_dir, self.fake_lib, models=models, extra=extra
        )
        d = Daemon(self.tmp / f"daemon{len(self.daemons)}", text, env=self.control.env())
        self.daemons.append(d)
        return d.start(**kw)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(m.payload) for m in self.sub.on(f"{BASE}/events")]
        return [e for e in out if kind is None or e.get("event") == kind]

    def results(self, model: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.sub.on(f"{BASE}/models/{model}/results")]

    def health(self) -> dict[str, Any]:
        msgs = self.sub.on(f"{BASE}/health")
        return json.loads(msgs[-1].payload) if msgs else {}

    def placement(self, model: str) -> list[str]:
        return list(self.health().get("models", {}).get(model, {}).get("devices", []))

    def send(self, model: str, ids: list[str], *, burst: bool = False) -> None:
        """One request per id, each waiting for its PUBACK; with `burst`, all published at
        once and then waited for (a test that needs them queued together, whatever the load)."""
        sent = [
            self.sub.publish(
                f"{BASE}/models/{model}/infer",
                small_png(len(rid)),
                wait=not burst,
                CorrelationData=rid.encode(),
            )
            for rid in ids
        ]
        for info in sent if burst else []:
            info.wait_for_publish(30)

    def answered(self, model: str) -> dict[str, dict[str, Any]]:
        return {r["request_id"]: r for r in self.results(model)}


@pytest.fixture
def rig(tmp_path: Path, models_dir: Path, fake_lib: Path) -> Iterator[Rig]:
    if not in_mock_environment():
        pytest.skip("needs umockdev: run under umockdev-wrapper (make test does)")
    (tmp_path / "state").mkdir(exist_ok=True)
    control = Control(tmp_path / "fake-edgetpu.control")
    # unplug aborts the device host holding the device, as libedgetpu does (#21)
    control.set(mode="simulate", invoke_ms=4)
    with umock_testbed() as tb, Broker(tmp_path, max_queued_messages=0) as broker:
        sub = Subscriber(broker, [f"{PREFIX}/#"]).start()
        r = Rig(tmp_path, tb, broker, control, models_dir, fake_lib, sub)
        try:
            yield r
        finally:
            control.set(hang=None)  # let any abandoned invoke return
            for d in r.daemons:
                d.close()
            sub.stop()


def usb_root(tb: Testbed) -> str:
    return tb.add_root_hub(2, 5000, maxchild=4)


def test_start_puts_the_top_model_on_pcie_and_results_flow(rig: Rig) -> None:
    root = usb_root(rig.tb)
    rig.tb.add_accelerator(root, 1)
    rig.tb.add_accelerator(root, 2)
    rig.tb.add_apex(0, "0000:03:00.0")
    d = rig.daemon()
    d.wait_ready()
    status = [s for s in d.said("STATUS=") if "TPU" in s]
    assert status, d.notifications
    wait_for(lambda: rig.placement("alpha"), 30, "health listing alpha's device")
    assert rig.placement("alpha") == ["pci:0000:03:00.0"]
    assert sorted(rig.placement("beta") + rig.placement("gamma")) == ["usb:2-1", "usb:2-2"]
    ids = [f"a{i}" for i in range(20)]
    rig.send("alpha", ids)
    wait_for(lambda: len(rig.answered("alpha")) >= len(ids), 60, "20 results for alpha")
    answered = rig.answered("alpha")
    assert set(answered) == set(ids)
    first = answered["a0"]
    assert first["schema"] == "edgetpud.result/1"
    assert first["device"] == "pci:0000:03:00.0"
    assert "error" not in first and first["result"][0]["label"]
    assert set(first["timing"]) >= {"queue_ms", "preprocess_ms", "invoke_ms", "postprocess_ms"}
    # the health contract of docs/mqtt.md, and what `edgetpud status` makes of it (once the
    # retained snapshot, republished every second, has caught up with the results)
    wait_for(lambda: rig.health()["models"]["alpha"]["results"] >= len(ids), 30, "health")
    health = rig.health()
    assert health["schema"] == "edgetpud.health/1"
    assert {
        "state",
        "tier",
        "devices",
        "rate",
        "p50_ms",
        "p99_ms",
        "queue_depth",
        "dropped",
    } <= set(health["models"]["alpha"])
    assert {"identity", "verdict", "reasons", "temperature", "health", "models"} <= set(
        health["devices"][0]
    )
    status = subprocess.run(
        [sys.executable, "-m", "edgetpud", "status", "--config", str(d.config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.split()[1:2] == ["alpha"])
    assert "running" in row and "pci:0000:03:00.0" in row and "dedicated" in row
    # `top -H` and `ps -L` tell the threads apart: alpha's 4 lanes, paho's, the watcher's
    assert d.proc is not None
    names = [
        (task / "comm").read_text().strip() for task in Path(f"/proc/{d.proc.pid}/task").iterdir()
    ]
    assert {"mqtt:sender", "mqtt:paho", "devices:watch"} <= set(names), names
    lanes = {n for n in names if n.startswith("alpha@pci:")}
    assert len(lanes) == 4 and {n[-2:] for n in lanes} >= {"/2", "/3", "/4"}, names
    assert d.stop() == 0


def test_hotplug_moves_only_what_it_concerns_and_loses_nothing(rig: Rig) -> None:
    root = usb_root(rig.tb)
    rig.tb.add_apex(0, "0000:03:00.0")
    first_usb = rig.tb.add_accelerator(root, 1)
    d = rig.daemon()
    d.wait_ready()
    wait_for(lambda: rig.placement("gamma"), 30, "gamma placed (shared)")
    before = {m: rig.placement(m) for m in ("alpha", "beta", "gamma")}
    assert before["alpha"] == ["pci:0000:03:00.0"] and before["beta"] == ["usb:2-1"]

    # plug a new accelerator: the lowest-priority model, which was sharing, gets it alone
    changes_before = len(rig.events("assignment_changed"))
    rig.tb.add_accelerator(root, 2)
    wait_for(lambda: rig.placement("gamma") == ["usb:2-2"], 30, "gamma moving to usb:2-2")
    moved = [e["model"] for e in rig.events("assignment_changed")[changes_before:]]
    assert moved == ["gamma"], moved
    assert rig.placement("alpha") == before["alpha"] and rig.placement("beta") == before["beta"]

    # the firmware-load re-enumeration of a third accelerator is not an unplug
    dfu = rig.tb.add_accelerator(root, 3, state="dfu")
    wait_for(lambda: rig.events("device_added") and any(
        e["device"] == "usb:2-3" for e in rig.events("device_added")), 30, "usb:2-3 added")  # fmt: skip
    rig.tb.firmware_load(dfu)
    time.sleep(3)  # past the 2 s debounce
    assert not [e for e in rig.events("device_removed") if e["device"] == "usb:2-3"]

    # unplug beta's accelerator while requests for beta are streaming in: none is lost
    ids = [f"b{i}" for i in range(300)]
    sender = threading.Thread(target=rig.send, args=("beta", ids))
    sender.start()
    wait_for(lambda: len(rig.answered("beta")) >= 20, 60, "beta under load")
    rig.tb.unplug(first_usb)
    sender.join(60)
    wait_for(lambda: len(rig.answered("beta")) >= len(ids), 90, "every beta request answered")
    answered = rig.answered("beta")
    assert set(answered) == set(ids)
    errors = {k: v["error"] for k, v in answered.items() if "error" in v}
    assert not errors, list(errors.items())[:3]
    # told by udev, or, when umockdev dropped the event, by the daemon's re-scan (<= 20 s)
    wait_for(
        lambda: any(e["device"] == "usb:2-1" for e in rig.events("device_removed")),
        30,
        "usb:2-1 removed",
    )
    wait_for(lambda: "usb:2-1" not in rig.placement("beta"), 10, "health showing beta moved")
    assert {r["device"] for r in answered.values()} - {"usb:2-1"}, "beta never ran elsewhere"
    assert d.stop() == 0


def test_hung_device_is_detected_its_host_killed_and_its_model_moves(rig: Rig) -> None:
    root = usb_root(rig.tb)
    rig.tb.add_apex(0, "0000:03:00.0")
    rig.tb.add_accelerator(root, 1)
    rig.tb.add_accelerator(root, 2)
    d = rig.daemon(watchdog_usec=3_000_000)
    d.wait_ready()
    wait_for(lambda: rig.placement("beta"), 30, "beta placed")
    hung_device = rig.placement("beta")[0]
    port = hung_device.split(":", 1)[1]
    rig.control.set(hang=port)
    ids = [f"h{i}" for i in range(40)]
    rig.send("beta", ids)
    stalled = wait_for(lambda: rig.events("worker_stalled"), 30, "a worker_stalled event")
    assert stalled[0]["device"] == hung_device and stalled[0]["model"] == "beta"
    wait_for(lambda: len(rig.answered("beta")) >= len(ids), 60, "every beta request answered")
    answered = rig.answered("beta")
    assert set(answered) == set(ids)
    assert all("error" not in r for r in answered.values())
    wait_for(lambda: hung_device not in rig.placement("beta"), 10, "health showing beta moved")
    devices = {dev["identity"]: dev for dev in rig.health()["devices"]}
    # its device host was killed and the device is reset, then tried again after the
    # quarantine: no replug needed (docs/workers.md, "Device hosts")
    assert devices[hung_device]["health"]["state"] == "quarantined"
    assert "wedged" in devices[hung_device]["health"]["reason"]
    assert "stall_timeout" in devices[hung_device]["health"]["reason"]
    last_exit = wait_for(
        lambda: rig.health().get("hosts", {}).get(hung_device, {}).get("last_exit"),
        30,
        "health saying how the wedged device's host ended",
    )
    assert "killed by edgetpud" in last_exit and "stall_timeout" in last_exit
    # still READY, still alive for systemd's watchdog
    assert d.proc is not None and d.proc.poll() is None
    dogs = len(d.said("WATCHDOG=1"))
    wait_for(lambda: len(d.said("WATCHDOG=1")) > dogs + 1, 10, "WATCHDOG=1 after the stall")
    rig.control.set(hang=None)
    assert d.stop() == 0


def test_reload_restarts_only_the_changed_model(rig: Rig) -> None:
    root = usb_root(rig.tb)
    rig.tb.add_apex(0, "0000:03:00.0")
    rig.tb.add_accelerator(root, 1)
    rig.tb.add_accelerator(root, 2)
    d = rig.daemon()
    d.wait_ready()
    wait_for(lambda: rig.placement("gamma"), 30, "all models placed")
    ids = [f"r{i}" for i in range(200)]
    sender = threading.Thread(target=rig.send, args=("beta", ids))
    sender.start()
    wait_for(lambda: len(rig.answered("beta")) >= 10, 60, "beta under load")
    changed = d.config.read_text().replace("priority = 10", "priority = 11")
    d.reload(changed)
    wait_for(lambda: rig.events("reload_ok"), 30, "reload_ok")
    sender.join(60)
    wait_for(lambda: len(rig.answered("beta")) >= len(ids), 60, "every beta request answered")
    assert set(rig.answered("beta")) == set(ids)
    log = d.log()
    assert "model gamma changed: restarting it" in log
    for model in ("alpha", "beta"):  # untouched: one worker each since start, never stopped
        assert log.count(f"model {model}: worker started on") == 1, log
        assert f"model {model}: worker on" not in log, log
    assert len(d.said("RELOADING=1")) == 1 and len(d.said("READY=1")) == 2

    # an invalid config is refused; the old one keeps serving
    d.reload(changed.replace("top_k = 1", 'top_k = "three"', 1))
    failed = wait_for(lambda: rig.events("reload_failed"), 30, "reload_failed")
    assert any("models.alpha.postprocess.top_k" in e for e in failed[0]["errors"])
    rig.send("alpha", ["after-bad-reload"])
    wait_for(lambda: "after-bad-reload" in rig.answered("alpha"), 30, "alpha still serving")
    wait_for(lambda: rig.health()["daemon"]["last_reload_error"], 10, "the error in health")
    refused = [x for x in d.log().splitlines() if "reload refused" in x]
    assert len(refused) == 1 and f"edgetpud check-config {d.config}" in refused[0], refused
    assert d.stop() == 0


def test_sigterm_under_load_exits_cleanly_and_leaves_offline(rig: Rig) -> None:
    root = usb_root(rig.tb)
    rig.tb.add_accelerator(root, 1)
    d = rig.daemon()
    d.wait_ready()
    wait_for(lambda: rig.placement("alpha"), 30, "alpha placed")
    ids = [f"s{i}" for i in range(100)]
    rig.send("alpha", ids)
    wait_for(lambda: rig.answered("alpha"), 30, "first results")
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.proc is not None
    assert d.proc.wait(30) == 0
    took = time.monotonic() - started
    assert took < 10 + 5, f"stop took {took:.1f} s, drain_timeout is 10 s"
    said = [line for _, line in d.notifications]
    assert "STOPPING=1" in said
    # systemd's TimeoutStopSec (30 s) is extended to the drain (10 s) + 15 s of closing
    assert "EXTEND_TIMEOUT_USEC=25000000" in said, said
    late = Subscriber(rig.broker, [f"{BASE}/status"]).start()
    try:
        retained = late.wait_for(f"{BASE}/status", 1, 10)[0]
    finally:
        late.stop()
    assert retained.payload == b"offline" and retained.retain
    answered = rig.answered("alpha")
    assert set(answered) == set(ids), f"{len(set(ids) - set(answered))} requests unanswered"


def test_a_reload_keeps_the_log_level_given_on_the_command_line(rig: Rig) -> None:
    text = config_text(rig.tmp, rig.broker.port, rig.models_dir, rig.fake_lib, models=THREE_MODELS)
    d = Daemon(rig.tmp / "pinned", text, env=rig.control.env())
    rig.daemons.append(d)
    d.start("--log-level", "warning").wait_ready()
    d.reload(d.config.read_text().replace('log_level = "info"', 'log_level = "debug"'))
    wait_for(lambda: rig.events("reload_ok"), 30, "reload_ok")
    assert d.stop() == 0
    log = d.log()
    assert "reload applied" not in log  # INFO: hidden by --log-level warning, before and after
    assert not [x for x in log.splitlines() if x.startswith(("DEBUG", "INFO"))], log


def test_a_reload_of_devices_performance_rejudges_power_and_reopens_models(rig: Rig) -> None:
    """std -> max on a USB 2 port: the 900 mA verdict appears, and alpha reopens at the new clock."""
    root = rig.tb.add_root_hub(1, 480, maxchild=4)
    rig.tb.add_accelerator(root, 1, speed=480)
    d = rig.daemon(THREE_MODELS.split("[models.beta]", 1)[0])
    d.wait_ready()
    wait_for(lambda: rig.placement("alpha") == ["usb:1-1"], 30, "alpha on the USB 2 accelerator")

    def reasons() -> list[str]:
        devs = [x for x in rig.health().get("devices", []) if x["identity"] == "usb:1-1"]
        return list(devs[0]["reasons"]) if devs else []

    assert not [r for r in reasons() if "900 mA" in r]
    d.reload(d.config.read_text().replace("[devices]\n", '[devices]\nperformance = "max"\n'))
    wait_for(lambda: rig.events("reload_ok"), 30, "reload_ok")
    wait_for(lambda: [r for r in reasons() if "900 mA" in r], 30, "the 900 mA warning")
    wait_for(lambda: d.log().count("model alpha: worker started on") == 2, 30, "alpha reopened")
    assert d.stop() == 0


def test_a_request_sent_the_moment_online_arrives_is_served(rig: Rig) -> None:
    """A client that waits for the retained-less live `online` and sends at once must get
    an answer from the model, not `unknown_model`: the daemon connects only once every
    configured model is in its admission table (found under emulation, where loading the
    models takes seconds)."""
    root = usb_root(rig.tb)
    rig.tb.add_accelerator(root, 1)
    sent: list[str] = []
    client = rig.sub.client
    inner = client.on_message

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        inner(c, userdata, msg)
        if msg.topic == f"{BASE}/status" and msg.payload == b"online" and not sent:
            sent.append("first")
            for name in ("alpha", "beta", "gamma"):  # from paho's thread: no delay at all
                c.publish(f"{BASE}/models/{name}/infer", small_png(1), qos=1)

    client.on_message = on_message
    d = rig.daemon()
    d.wait_ready()
    wait_for(lambda: sent, 60, "online")

    def answers() -> list[dict[str, Any]]:
        return [
            json.loads(m.payload)
            for name in ("alpha", "beta", "gamma")
            for m in rig.sub.on(f"{BASE}/models/{name}/results")
        ]

    got = wait_for(lambda: len(answers()) >= 3 and answers(), 60, "three answers")
    assert [a.get("reason") for a in got if a.get("reason")] == [], got
    assert all(a["schema"] == "edgetpud.result/1" for a in got), got
    assert d.stop() == 0
