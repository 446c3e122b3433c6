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
from tests.support.daemon import wait_for
from tests.support.faults import fault_rig, threads

pytestmark = pytest.mark.e2e

MODELS = """
[models.alpha]
model = "{m}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
priority = 90
queue_size = 1000
[models.beta]
model = "{m}/mobilenet_v1_0.5_160_quant_edgetpu.tflite"
priority = 50
queue_size = 1000
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
        wait_for(lambda: rig.placement("alpha") and rig.placement("beta"), 30, "both placed")
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
        # the file now is the invalid one; the last valid one was #48 (priority 58)
        d.config.write_text(last_valid)
        d.signal(signal.SIGHUP)
        wait_for(
            lambda: (
                rig.health().get("daemon", {}).get("last_reload_error") is None
                and rig.events("reload_ok")
                and rig.events("reload_ok")[-1].get("generation") is not None
            ),
            60,
            "a final successful reload",
        )
        assert d.proc.poll() is None, d.log()[-3000:]
        # the loop coalesces HUPs: fewer reloads than signals, never a crash
        oks, fails = rig.events("reload_ok"), rig.events("reload_failed")
        assert 1 <= len(oks) + len(fails) <= 51
        assert any("models.beta.priority" in e for f in fails for e in f["errors"]) or not fails
        final_gen = oks[-1]["generation"]
        wait_for(
            lambda: rig.health()["daemon"]["config_generation"] == final_gen,
            30,
            "health on the final generation",
        )
        wait_for(lambda: rig.placement("alpha") and rig.placement("beta"), 30, "both placed")
        assert sorted(rig.health()["models"]) == ["alpha", "beta"]
        assert "Traceback" not in d.log()
        rig.send("beta", ["after-storm"])
        wait_for(lambda: "after-storm" in rig.answered("beta"), 30, "beta still serving")
        wait_for(
            lambda: threads(d.proc.pid) <= baseline,  # type: ignore[union-attr]
            60,
            f"thread count back to {baseline} (now {threads(d.proc.pid)})",
        )
        assert d.stop() == 0
