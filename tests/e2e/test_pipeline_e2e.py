"""A pipelined model end to end: Coral's SSD MobileNet v1 in two segments, served over
MQTT by the daemon across two simulated Edge TPUs, through the unplug of one stage's
device (the whole pipeline is re-planned; no request is lost)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.e2e.test_service import Rig, rig, usb_root  # noqa: F401 - the fixture
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

PIPELINED = """
[models.ssd]
model = "{m}/ssd_mobilenet_v1_coco_quant_postprocess_segment_0_of_2_edgetpu.tflite"
segments = [
  "{m}/ssd_mobilenet_v1_coco_quant_postprocess_segment_0_of_2_edgetpu.tflite",
  "{m}/ssd_mobilenet_v1_coco_quant_postprocess_segment_1_of_2_edgetpu.tflite",
]
queue_size = 1000
"""


def test_a_pipelined_model_serves_requests_and_survives_an_unplug_of_a_stage(
    rig: Rig,  # noqa: F811
) -> None:
    root = usb_root(rig.tb)
    first = rig.tb.add_accelerator(root, 1)
    rig.tb.add_accelerator(root, 2)
    d = rig.daemon(PIPELINED)
    d.wait_ready()
    wait_for(lambda: rig.placement("ssd"), 30, "ssd placed")
    assert rig.placement("ssd") == ["usb:2-1+usb:2-2"]  # one worker, a stage on each

    ids = [f"s{i}" for i in range(200)]
    sender = threading.Thread(target=rig.send, args=("ssd", ids))
    sender.start()
    wait_for(lambda: len(rig.answered("ssd")) >= 20, 60, "ssd under load")

    def stages() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = rig.health()["models"]["ssd"].get("stages", [])
        return found

    # health shows each stage: its device, rate and latency
    wait_for(lambda: all(s["invokes"] > 0 for s in stages()), 10, "stage figures")
    assert [s["device"] for s in stages()] == ["usb:2-1", "usb:2-2"], stages()
    assert all(s["latency_ms_p50"] > 0 and s["rate_per_s"] >= 0 for s in stages()), stages()

    rig.tb.add_accelerator(root, 3)  # a spare: the re-planned pipeline gets two TPUs again
    wait_for(lambda: any(e["device"] == "usb:2-3" for e in rig.events("device_added")), 30, "2-3")
    rig.tb.unplug(first)  # segment 0's device
    sender.join(60)
    wait_for(lambda: len(rig.answered("ssd")) >= len(ids), 90, "every ssd request answered")
    answered = rig.answered("ssd")
    assert set(answered) == set(ids)
    errors = {k: v["error"] for k, v in answered.items() if "error" in v}
    assert not errors, list(errors.items())[:3]
    wait_for(lambda: "usb:2-1" not in rig.placement("ssd")[0], 10, "the pipeline re-planned")
    assert rig.placement("ssd") == ["usb:2-2+usb:2-3"] or rig.placement("ssd") == [
        "usb:2-3+usb:2-2"
    ], rig.placement("ssd")
    assert d.stop() == 0
