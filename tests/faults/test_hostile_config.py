"""Config files built to break the parser: what check-config, run and a SIGHUP do with them.

A 1 KB file of arrays or inline tables nested ~500 deep makes Python's TOML parser
raise RecursionError; a 5,000-digit integer makes it raise ValueError; a named pipe
or /dev/zero as the config path would block or never end. An admin must get one line
saying what is wrong: `check-config` exits 2 (unreadable), `run` exits 78 (EX_CONFIG,
the unit's RestartPreventExitStatus, so systemd does not restart-loop it), and a
SIGHUP with such a file keeps the daemon serving on the config it had.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_service import usb_root
from tests.support.daemon import ROOT
from tests.support.faults import fault_rig
from tests.support.polling import wait_for

DEPTH = 500
BOMBS = {
    "arrays": "[daemon]\nx = " + "[" * DEPTH + "]" * DEPTH + "\n",
    "inline tables": "x = " + "{a = " * DEPTH + "1" + "}" * DEPTH + "\n",
    "a 5,000-digit integer": "[mqtt]\nport = " + "1" * 5000 + "\n",
}


def edgetpud(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetpud", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_parser_bomb_is_one_line_exit_2_for_check_config_and_78_for_run(
    tmp_path: Path, bomb: str
) -> None:
    cfg = tmp_path / "edgetpud.toml"
    cfg.write_text(BOMBS[bomb])
    assert cfg.stat().st_size < 6000
    out = edgetpud("check-config", str(cfg))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines[:5]
    assert lines[0].startswith(f"error: {cfg}: ") and len(lines[0]) < 400, lines[0]
    run = edgetpud("run", "--config", str(cfg))
    assert run.returncode == 78, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert "not starting" in run.stderr


def test_nesting_over_the_limit_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "edgetpud.toml"
    cfg.write_text("[devices]\nallow = " + "[" * 40 + '"2-*"' + "]" * 40 + "\n")
    out = edgetpud("check-config", str(cfg))
    assert out.returncode == 2
    assert "devices.allow[0][0]" in out.stderr and "over the limit of 16" in out.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "huge"])
def test_a_config_that_is_no_file_is_named_for_what_it_is_and_never_read(
    tmp_path: Path, kind: str
) -> None:
    if kind == "fifo":
        cfg = tmp_path / "edgetpud.toml"
        os.mkfifo(cfg)
        said = "is a named pipe (FIFO), not a file"
    elif kind == "huge":
        cfg = tmp_path / "edgetpud.toml"
        cfg.write_text("# " + "x" * (2 * 1024 * 1024) + "\n")
        said = "is 2097155 bytes, over the 1048576-byte limit for a config file"
    else:
        cfg = Path(kind)
        said = "is a character device node, not a file"
    out = edgetpud("check-config", str(cfg), timeout=30)  # a FIFO read would block for ever
    assert out.returncode == 2, out.stderr
    assert f"error: {cfg}: {said}" in out.stderr


MODEL = """
[models.alpha]
model = "{m}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
queue_size = 100
"""


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_sighup_with_a_nesting_bomb_keeps_the_old_config_and_keeps_serving(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    with fault_rig(tmp_path, models_dir, fake_lib) as rig:
        rig.tb.add_accelerator(usb_root(rig.tb), 1)
        d = rig.daemon(models=MODEL)
        d.wait_ready()
        assert d.proc is not None
        wait_for(lambda: rig.placement("alpha"), 30, "alpha placed")
        generation = rig.health()["daemon"]["config_generation"]
        good = d.config.read_text()
        d.reload(good + BOMBS["arrays"].replace("[daemon]\n", ""))
        failed = wait_for(lambda: rig.events("reload_failed"), 30, "a reload_failed event")
        assert "nested hundreds of levels deep" in failed[-1]["errors"][0]
        assert d.proc.poll() is None, d.log()[-3000:]
        rig.send("alpha", ["after-bomb"])
        wait_for(lambda: "after-bomb" in rig.answered("alpha"), 30, "alpha still serving")
        assert rig.health()["daemon"]["config_generation"] == generation
        assert "Traceback" not in d.log() and "RecursionError" not in d.log()
        assert d.stop() == 0
