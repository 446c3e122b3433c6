"""A third-party plugin package: discovered through its entry point, validated, used.

The package is written in tmp_path as a wheel (the zip any build backend makes,
so no build tools or network are needed) and installed with `pip install
--target`, and
discovery runs in a subprocess with PYTHONPATH pointing there, so the shared
virtualenv is never modified.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

PLUGIN = """
from dataclasses import dataclass
from typing import Any

from edgetpud.plugins import Postprocessor
from edgetpud.schema import option


@dataclass(frozen=True)
class Config:
    factor: float = option("Multiply the first output by this.", 2.0, minimum=0.0)


class Doubler(Postprocessor):
    name = "{class_name}"
    Config = Config

    def process(self, outputs: Any, request: Any) -> Any:
        return [float(v) * self.config.factor for v in outputs[0].reshape(-1)]
"""

WHEEL_FILES = {
    "edgetpud_doubler-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: edgetpud-doubler\n"
    "Version: 0.1\n",
    "edgetpud_doubler-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: edgetpud-tests\n"
    "Root-Is-Purelib: true\nTag: py3-none-any\n",
    "edgetpud_doubler-0.1.dist-info/entry_points.txt": "[edgetpud.plugins]\n"
    "doubler = edgetpud_doubler:Doubler\n",
}

SCRIPT = """
import json, sys
import numpy as np
from edgetpud import config, plugins
from edgetpud.errors import ConfigError
from edgetpud.messages import Request

reg = plugins.discover()
out = {"status": reg.statuses.get("doubler").__dict__ if "doubler" in reg.statuses else None}
model = sys.argv[1]
try:
    cfg = config.parse(
        {"models": {"m": {"model": model, "postprocess": {"type": "doubler", "factor": 3}}}},
        registry=reg,
    )
    options = cfg.models["m"].postprocess.options
    cls = reg.get("postprocess", "doubler")
    post = cls(options, None, None)
    out["result"] = post.process([np.array([[1.0, 2.5]])], Request("m", b""))
except Exception as exc:
    out["error"] = str(exc)
try:
    config.parse(
        {"models": {"m": {"model": model, "postprocess": {"type": "doubler", "factor": -1}}}},
        registry=reg,
    )
except ConfigError as exc:
    out["config_errors"] = [str(i) for i in exc.issues]
print(json.dumps(out))
"""


def install(tmp_path: Path, class_name: str) -> Path:
    """Write a wheel (a zip, as any build backend would) and pip-install it into tmp."""
    files = {**WHEEL_FILES, "edgetpud_doubler/__init__.py": PLUGIN.format(class_name=class_name)}
    record = "".join(
        f"{name},sha256={_digest(text.encode())},{len(text.encode())}\n"
        for name, text in files.items()
    )
    files["edgetpud_doubler-0.1.dist-info/RECORD"] = record + (
        "edgetpud_doubler-0.1.dist-info/RECORD,,\n"
    )
    wheel = tmp_path / "edgetpud_doubler-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    return target


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def discover(target: Path, tmp_path: Path) -> dict[str, object]:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3")
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(model)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(600)
def test_a_third_party_plugin_is_discovered_validated_and_used(tmp_path: Path) -> None:
    out = discover(install(tmp_path, "doubler"), tmp_path)
    assert out["status"] == {
        "name": "doubler",
        "kind": "postprocess",
        "state": "loaded",
        "error": "",
        "origin": "edgetpud_doubler:Doubler",
    }
    assert out["result"] == [3.0, 7.5]
    assert out["config_errors"] == ["models.m.postprocess.factor: must be a number ≥ 0, got -1"]


@pytest.mark.timeout(600)
def test_a_plugin_whose_names_disagree_gets_a_load_error(tmp_path: Path) -> None:
    out = discover(install(tmp_path, "double"), tmp_path)
    status = out["status"]
    assert isinstance(status, dict)
    assert status["state"] == "load_error"
    assert "named \"doubler\" but the class says name = 'double'" in status["error"]
    assert "could not be loaded" in str(out["error"])
