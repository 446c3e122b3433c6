"""MQTT requests for models that cannot serve them get an answer that says why.

- A model with no device (its only Edge TPU unplugged, no cpu_model): requests wait in
  its queue for `daemon.waiting_timeout`, so a quick replug would serve them; after it
  the queued ones are answered `no_device` and new ones refused at once. Once an
  accelerator appears the model serves again.
- The journal says once why the model waits, and once that a label file does not fit
  its model (COCO's labels on an ImageNet classifier).
- A model disabled by a broken label file is refused as `model_disabled`, with the
  reason; a model fed by another source as `not_mqtt_source`. Neither is
  `unknown_model`, which would tell the client the node does not have it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_service import config_text, usb_root
from tests.support.daemon import Daemon
from tests.support.faults import fault_rig
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

MODELS = """
[models.alpha]
model = "{m}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
queue_size = 100
[models.broken]
model = "{m}/mobilenet_v1_0.25_128_quant.tflite"
device = "cpu"
labels = "{labels}"
[models.misfit]
model = "{m}/mobilenet_v1_0.25_128_quant.tflite"
device = "cpu"
labels = "{m}/coco_labels.txt"
[models.misfit.postprocess]
type = "classify"
[models.synth]
model = "{m}/mobilenet_v1_0.25_128_quant.tflite"
device = "cpu"
[models.synth.source]
type = "synthetic"
rate = 1.0
"""


@pytest.mark.timeout(150)
def test_requests_for_models_that_cannot_serve_them_are_answered_with_why(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"\xff\xfe not UTF-8\n")
    with fault_rig(tmp_path, models_dir, fake_lib) as rig:
        models = MODELS.replace("{labels}", str(labels))
        text = config_text(tmp_path, rig.broker.port, models_dir, fake_lib, models=models)
        text = text.replace(
            'drain_timeout = "10s"', 'drain_timeout = "10s"\nwaiting_timeout = "3s"'
        )
        assert 'waiting_timeout = "3s"' in text
        d = Daemon(tmp_path / "daemon", text, env=rig.control.env())
        rig.daemons.append(d)
        d.start().wait_ready()

        rig.send("alpha", ["early-1", "early-2"])  # no device yet: they wait
        rig.send("broken", ["to-broken"])
        rig.send("synth", ["to-synth"])
        wait_for(
            lambda: {"early-1", "early-2"} <= set(rig.answered("alpha")),
            60,
            "the waiting requests answered after waiting_timeout",
        )
        for rid in ("early-1", "early-2"):
            error = rig.answered("alpha")[rid]["error"]
            assert error.startswith("no_device: model alpha has had no device"), error
            assert "retry when" in error
        rig.send("alpha", ["late"])
        wait_for(lambda: "late" in rig.answered("alpha"), 30, "the late request refused")
        late = rig.answered("alpha")["late"]
        assert late["reason"] == "no_device", late

        broken = rig.answered("broken")["to-broken"]
        assert broken["reason"] == "model_disabled", broken
        assert "not UTF-8" in broken["message"]
        synth = {r.get("request_id"): r for r in rig.results("synth")}["to-synth"]
        assert synth["reason"] == "not_mqtt_source", synth
        assert 'source.type = "mqtt"' in synth["message"]

        waiting = [x for x in d.log().splitlines() if "model alpha waiting:" in x]
        assert len(waiting) == 1 and "waiting: waiting" not in waiting[0], waiting
        rig.tb.add_accelerator(usb_root(rig.tb), 1)  # a device appears: alpha serves again
        wait_for(lambda: rig.placement("alpha") == ["usb:2-1"], 60, "alpha on the new device")
        rig.send("alpha", ["after"])
        wait_for(lambda: "after" in rig.answered("alpha"), 60, "alpha answering again")
        assert "error" not in rig.answered("alpha")["after"], rig.answered("alpha")["after"]
        assert "reason" not in rig.answered("alpha")["after"]
        assert d.stop() == 0
        assert "Traceback" not in d.log()
        misfit = [x for x in d.log().splitlines() if "model misfit: label file" in x]
        assert len(misfit) == 1 and "coco_labels.txt" in misfit[0], misfit
        assert "model alpha: label file" not in d.log()
