"""`edgetpud plan` end to end: real config, real model files, a devices file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ROOT / "docs" / "examples" / "devices-1pci-2usb.json"


def run_plan(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edgetpud", "plan", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)


def write_config(tmp_path: Path, models_dir: Path) -> Path:
    text = (ROOT / "tests" / "data" / "placement.toml").read_text()
    path = tmp_path / "edgetpud.toml"
    path.write_text(text.replace("/work/shared/models", str(models_dir)))
    return path


def test_plan_places_cocompiled_models_together_and_explains(
    tmp_path: Path, models_dir: Path
) -> None:
    proc = run_plan("--config", str(write_config(tmp_path, models_dir)), "--devices", str(DEVICES))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["schema"] == "edgetpud.plan/1"
    models = out["models"]
    assert models["doorbell"]["placement"] == ["pci:0000:03:00.0"]
    assert models["doorbell"]["tier"] == "dedicated"
    assert models["driveway"]["placement"] == ["usb:2-1"]
    assert models["birds"]["placement"] == models["garden"]["placement"] == ["usb:1-2"]
    assert "co-compiled" in models["birds"]["reason"]
    assert models["broken"]["tier"] == "disabled"
    assert out["devices"]["usb:1-2"] == ["birds", "garden"]


def test_plan_reports_unreadable_model_as_disabled(tmp_path: Path, models_dir: Path) -> None:
    junk = tmp_path / "junk_edgetpu.tflite"
    junk.write_bytes(b"not a model")
    cfg = tmp_path / "edgetpud.toml"
    cfg.write_text(f'[models.junk]\nmodel = "{junk}"\n')
    proc = run_plan("--config", str(cfg), "--devices", str(DEVICES))
    assert proc.returncode == 0, proc.stderr
    junk_plan = json.loads(proc.stdout)["models"]["junk"]
    assert junk_plan["tier"] == "disabled"
    assert junk_plan["reason"]


def test_plan_invalid_config_exits_1_with_dotted_path(tmp_path: Path) -> None:
    cfg = tmp_path / "edgetpud.toml"
    cfg.write_text("[models.cam]\npriority = 500\n")
    proc = run_plan("--config", str(cfg), "--devices", str(DEVICES))
    assert proc.returncode == 1
    assert "models.cam.priority" in proc.stderr


def test_plan_unreadable_devices_file_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "edgetpud.toml"
    cfg.write_text("")
    bad = tmp_path / "devices.json"
    bad.write_text("{not json")
    proc = run_plan("--config", str(cfg), "--devices", str(bad))
    assert proc.returncode == 2
    assert "edgetpud devices --json" in proc.stderr
    missing = run_plan("--config", str(cfg), "--devices", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
