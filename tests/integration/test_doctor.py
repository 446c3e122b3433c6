"""`edgetpud doctor`: each fault a user can meet, staged for real, gives its FAIL line and fix.

The faults: no TFLite runtime (the source tree run by Debian's own python3, which has
none), an accelerator's device node in the wrong group (a real character node in the
umockdev testbed's /dev), a wrong broker password (a real mosquitto with a password
file), and a model that cannot open (in the child process doctor starts).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Broker
from tests.support.fakelib import held_elsewhere, make_control
from tests.support.umock import Testbed, umock

__all__ = ["umock"]  # the fixture

ROOT = Path(__file__).resolve().parents[2]
CPU_MODEL = "mobilenet_v1_0.25_128_quant.tflite"
TPU_MODEL = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
PRIVATE_RUNTIME = Path("/usr/lib/edgetpud/python")


def write_config(folder: Path, models: Path, broker: Broker | None, body: str = "") -> Path:
    port = broker.port if broker else 1
    config = folder / "edgetpud.toml"
    config.write_text(
        f"""
[daemon]
node_id = "doctortest"
state_dir = "{folder / "state"}"

[mqtt]
host = "127.0.0.1"
port = {port}
{body}

[models.cpu]
model = "{models / CPU_MODEL}"
device = "cpu"
"""
    )
    return config


def doctor(
    config: Path, *extra: str, python: str = sys.executable, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    """Run `edgetpud doctor --json` and the text form; (exit code, checks by name, text)."""
    cmd = [python, "-m", "edgetpud", "doctor", "--config", str(config), *extra]
    environ = {**os.environ, **(env or {})}
    as_json = subprocess.run(
        [*cmd, "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env=environ,
        cwd=ROOT,
        check=False,
    )
    text = subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, env=environ, cwd=ROOT, check=False
    )
    assert as_json.returncode == text.returncode, (as_json.stderr, text.stderr)
    report = json.loads(as_json.stdout)
    assert report["schema"] == "edgetpud.doctor/1"
    assert report["ok"] == (as_json.returncode == 0)
    print(text.stdout, text.stderr)
    return as_json.returncode, {c["check"]: c for c in report["checks"]}, text.stdout


def test_a_working_cpu_setup_passes_every_check_that_matters(
    tmp_path: Path, models_dir: Path
) -> None:
    with Broker(tmp_path) as broker:
        config = write_config(tmp_path, models_dir, broker)
        _code, checks, text = doctor(config)
    order = list(checks)
    assert order[:3] == ["config", "tflite runtime", "libedgetpu"], order
    assert order[-1] == "broker"
    assert checks["config"]["status"] == "OK"
    assert checks["tflite runtime"]["status"] == "OK"
    assert checks["tflite runtime"]["detail"].startswith("tflite_runtime 2.14.0")
    assert checks["model cpu"]["status"] == "OK", checks["model cpu"]
    assert checks["model cpu"]["detail"] == f"{CPU_MODEL} opens on the CPU"
    assert checks["broker"]["status"] == "OK", checks["broker"]
    # no Edge TPU model is configured, so a missing libedgetpu is a warning, not a failure
    assert checks["libedgetpu"]["status"] == "WARN"
    assert "install libedgetpu1-std" in checks["libedgetpu"]["fix"]
    for line in text.splitlines():
        if line.startswith(("WARN", "FAIL")):
            assert line.split(" ", 1)[1], line
    assert text.splitlines()[-1].endswith("FAIL")


@pytest.fixture
def package_lock() -> Iterator[None]:
    """The package tests install /usr/lib/edgetpud/python; wait until they are done."""
    with open("/run/lock/edgetpud-package-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def test_no_tflite_runtime_fails_with_the_fix(
    tmp_path: Path, models_dir: Path, package_lock: None
) -> None:
    debian_python = "/usr/bin/python3"
    probe = subprocess.run(
        [debian_python, "-c", "import numpy, pyudev, paho.mqtt; import tflite_runtime"],
        capture_output=True,
        text=True,
        check=False,
    )
    if "No module named 'tflite_runtime'" not in probe.stderr:
        pytest.fail(
            f"Debian's python3 should have numpy, pyudev, paho and no tflite_runtime: {probe}"
        )
    if PRIVATE_RUNTIME.exists():
        pytest.fail(f"{PRIVATE_RUNTIME} exists: an edgetpud package is installed; purge it")
    config = write_config(tmp_path, models_dir, None)
    code, checks, text = doctor(
        config,
        python=debian_python,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}", "PATH": "/usr/bin:/bin"},
    )
    assert code == 1
    runtime = checks["tflite runtime"]
    assert runtime["status"] == "FAIL"
    assert "apt install --reinstall ./edgetpud_<version>_<arch>.deb" in runtime["fix"], runtime
    assert "FAIL tflite runtime: not importable" in text
    assert checks["models"]["status"] == "FAIL"


def test_a_device_node_in_the_wrong_group_fails_with_the_udev_fix(
    umock: Testbed, tmp_path: Path, models_dir: Path
) -> None:
    root = umock.add_root_hub(2)
    umock.add_accelerator(root, 1)
    node = Path(umock.root) / "dev/bus/usb/002/002"
    if not node.exists():  # the testbed may make the node itself
        node.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(node, 0o600 | 0o020000, os.makedev(189, 129))
    node.chmod(0o660)
    os.chown(node, 0, 0)  # root:root, 0660: what udev leaves when the rules did not apply
    config = write_config(tmp_path, models_dir, None)
    # "nobody" stands for the service user: it exists everywhere and is in group nogroup
    code, checks, _text = doctor(config, "--user", "nobody")
    assert code == 1
    line = checks["device usb:2-1 node"]
    assert line["status"] == "FAIL", line
    assert line["detail"].startswith(
        "/dev/bus/usb/002/002 crw-rw---- root:root; nobody cannot open"
    )
    assert "udevadm control --reload-rules && udevadm trigger" in line["fix"]
    assert checks["device usb:2-1 verdict"]["status"] == "OK"

    shutil.chown(node, group="nogroup")
    code, checks, _ = doctor(config, "--user", "nobody")
    assert checks["device usb:2-1 node"]["status"] == "OK", checks["device usb:2-1 node"]


@pytest.mark.broker(users={"edgetpud": "the-password"})
def test_a_wrong_broker_password_fails_naming_the_password_file(
    tmp_path: Path, broker: Broker, models_dir: Path
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("not-the-password\n")
    secret.chmod(0o600)
    body = f'username = "edgetpud"\npassword_file = "{secret}"'
    config = write_config(tmp_path, models_dir, broker, body)
    code, checks, _text = doctor(config)
    assert code == 1
    line = checks["broker"]
    assert line["status"] == "FAIL", line
    assert line["detail"].startswith(f"127.0.0.1:{broker.port} as edgetpud: ")
    assert "refused" in line["detail"]
    assert "mqtt.password_file" in line["fix"]

    secret.write_text("the-password\n")
    code, checks, _ = doctor(config)
    assert checks["broker"]["status"] == "OK", checks["broker"]
    assert code == 0 or any(c["status"] == "FAIL" for c in checks.values())


def test_an_edgetpu_model_without_libedgetpu_fails_in_the_child_not_in_doctor(
    tmp_path: Path, models_dir: Path
) -> None:
    config = write_config(tmp_path, models_dir, None)
    text = config.read_text() + (
        f'\n[models.tpu]\nmodel = "{models_dir / TPU_MODEL}"\ndevice = "usb"\n'
        f'\n[runtime]\nlibrary = "{tmp_path / "no-such-libedgetpu.so.1"}"\n'
    )
    config.write_text(text)
    code, checks, _ = doctor(config)
    assert code == 1
    assert checks["libedgetpu"]["status"] == "FAIL"  # an Edge TPU model needs it
    assert checks["model tpu"]["status"] == "FAIL"
    assert "needs an Edge TPU" in checks["model tpu"]["detail"]
    assert checks["model cpu"]["status"] == "OK"


def tpu_config(folder: Path, models: Path, fake_lib: Path) -> Path:
    config = write_config(folder, models, None)
    config.write_text(
        config.read_text()
        + f'\n[models.tpu]\nmodel = "{models / TPU_MODEL}"\ndevice = "usb"\n'
        + f'\n[runtime]\nlibrary = "{fake_lib}"\n'
    )
    return config


def test_an_edgetpu_model_opens_on_its_accelerator_in_the_child(
    umock: Testbed,
    tmp_path: Path,
    models_dir: Path,
    fake_lib: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = umock.add_root_hub(2)
    umock.add_accelerator(root, 1)
    make_control(tmp_path, monkeypatch, mode="simulate")  # the test library claims the TPU op
    _code, checks, _text = doctor(tpu_config(tmp_path, models_dir, fake_lib))
    assert checks["libedgetpu"]["status"] == "OK", checks["libedgetpu"]
    assert "BuildLabel(fake_edgetpu), RuntimeVersion(14)" in checks["libedgetpu"]["detail"]
    assert checks["runtime pairing"]["status"] == "OK"
    assert checks["device usb:2-1 holders"] == {
        "check": "device usb:2-1 holders",
        "status": "OK",
        "detail": "no process holds it",
        "fix": "",
    }
    assert checks["model tpu"]["status"] == "OK", checks["model tpu"]
    assert checks["model tpu"]["detail"] == f"{TPU_MODEL} opens on usb:2-1"


def test_an_accelerator_held_by_another_process_is_named(
    umock: Testbed,
    tmp_path: Path,
    models_dir: Path,
    fake_lib: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = umock.add_root_hub(2)
    umock.add_accelerator(root, 1)
    make_control(tmp_path, monkeypatch, mode="simulate")
    with held_elsewhere(fake_lib, "2-1") as holder:
        code, checks, _text = doctor(tpu_config(tmp_path, models_dir, fake_lib))
    assert code == 1
    held = checks["device usb:2-1 holders"]
    assert held["status"] == "WARN", held
    assert f"pid {holder.pid} (python" in held["detail"], held
    assert "stop that program" in held["fix"]
    model = checks["model tpu"]
    assert model["status"] == "FAIL", model
    assert "usb:2-1" in model["detail"]
