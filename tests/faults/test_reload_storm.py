"""50 SIGHUPs in 5 s, alternating valid and invalid configs.

The daemon coalesces HUPs, validates before it stops anything, and ends on the last
valid file: right config generation and models, no crash, no leaked worker thread.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.e2e.test_service import usb_root
from tests.support.faults import fault_rig, threads
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

ALL = ("alpha", "beta", "gamma")


MODELS = """
[models.alpha]
model = "{m}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
priority = 90
queue_size = 1000
[models.beta]
model = "{m}/mobilenet_v1_0.5_160_quant_edgetpu.tflite"
priority = 50
queue_size = 1000
[models.gamma]
model = "{m}/mobilenet_v1_0.25_128_quant_cocompiled_with_mobilenet_v1_0.5_160_quant_edgetpu.tflite"
priority = 5
device = "any"
"""


@pytest.mark.timeout(180)
def test_fifty_hups_alternating_valid_and_invalid_end_on_the_last_valid(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    with fault_rig(tmp_path, models_dir, fake_lib) as rig:
        root = usb_root(rig.tb)
        rig.tb.add_accelerator(root, 1)
        rig.tb.add_accelerator(root, 2)
        d = rig.daemon(models=MODELS)
        d.wait_ready()
        assert d.proc is not None
        wait_for(lambda: all(rig.placement(m) for m in ALL), 30, "every model placed")
        # the final valid file pins gamma to the device it is not on now: a visible marker
        pin = "usb:2-2" if rig.placement("gamma") == ["usb:2-1"] else "usb:2-1"
        time.sleep(2)
        baseline = threads(d.proc.pid)
        good = d.config.read_text()
        bad = good.replace("priority = 50", 'priority = "high"')
        last_valid = ""
        for i in range(50):
            if i % 2 == 0:
                # valid: beta's priority changes each time, so every applied reload restarts it
                last_valid = good.replace("priority = 50", f"priority = {10 + i}")
                d.config.write_text(last_valid)
            else:
                d.config.write_text(bad)
            d.signal(signal.SIGHUP)
            time.sleep(0.1)
        # the file now is the invalid one: fix it the way an admin would, with gamma
        # pinned, so the final state can only come from this last valid file
        final = last_valid.replace('device = "any"', f'device = "{pin}"')
        d.config.write_text(final)
        d.signal(signal.SIGHUP)

        def settled() -> bool:
            h = rig.health()
            oks = rig.events("reload_ok")
            return bool(
                oks
                and oks[-1]["models"] == ["alpha", "beta", "gamma"]
                and h.get("daemon", {}).get("config_generation") == oks[-1]["generation"]
                and h["daemon"]["last_reload_error"] is None
                and sorted(h["models"]) == ["alpha", "beta", "gamma"]
                and rig.placement("gamma") == [pin]
            )

        wait_for(settled, 90, "health on the last valid config")
        assert d.proc.poll() is None, d.log()[-3000:]
        # HUPs that arrive while a reload runs are coalesced: at most one reload per signal
        oks, fails = rig.events("reload_ok"), rig.events("reload_failed")
        assert 2 <= len(oks) + len(fails) <= 51
        assert all(any("models.beta.priority" in e for e in f["errors"]) for f in fails)
        wait_for(lambda: all(rig.placement(m) for m in ALL), 30, "every model placed")
        assert "Traceback" not in d.log()
        rig.send("beta", ["after-storm"])
        wait_for(lambda: "after-storm" in rig.answered("beta"), 30, "beta still serving")
        wait_for(
            lambda: threads(d.proc.pid) <= baseline,  # type: ignore[union-attr]
            60,
            f"thread count back to {baseline} (now {threads(d.proc.pid)})",
        )
        assert d.stop() == 0
