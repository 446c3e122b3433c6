"""Config files others could read or change are refused with the reason and the fix.

What an admin sees from `edgetpud check-config` (exit 1, the reason on stdout/stderr) and
from `edgetpud run` (exit 78, EX_CONFIG, so systemd does not restart-loop): a password
file readable by others, a private key readable by group, a config file or config folder
writable by every user. There is no plugin folder setting to check: plugins come from
installed packages' entry points, never from a folder named in the config.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetpud", "check-config", str(path)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_config(folder: Path, mqtt: str) -> Path:
    folder.mkdir(mode=0o755, exist_ok=True)
    folder.chmod(0o755)
    cfg = folder / "edgetpud.toml"
    cfg.write_text(f'[daemon]\nnode_id = "box"\nstate_dir = "{folder / "state"}"\n[mqtt]\n{mqtt}')
    cfg.chmod(0o644)
    return cfg


@pytest.mark.timeout(60)
def test_a_world_readable_password_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    cfg = write_config(tmp_path / "etc", f'username = "edge"\npassword_file = "{secret}"\n')
    out = check(cfg)
    assert out.returncode == 1, out
    text = out.stdout + out.stderr
    assert "mqtt.password_file" in text and "mode 0644" in text
    assert f"chmod 600 {secret}" in text
    secret.chmod(0o600)
    assert check(cfg).returncode == 0


@pytest.mark.timeout(60)
def test_a_group_readable_private_key_is_refused(tmp_path: Path) -> None:
    key, crt = tmp_path / "client.key", tmp_path / "client.crt"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    crt.write_text("-----BEGIN CERTIFICATE-----\n")
    key.chmod(0o640)
    cfg = write_config(tmp_path / "etc", f'tls = true\ncert_file = "{crt}"\nkey_file = "{key}"\n')
    out = check(cfg)
    assert out.returncode == 1
    assert "mqtt.key_file" in out.stdout + out.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_config_writable_by_others_is_refused_and_run_exits_78(tmp_path: Path, what: str) -> None:
    cfg = write_config(tmp_path / "etc", 'host = "127.0.0.1"\n')
    target = cfg if what == "file" else cfg.parent
    target.chmod(0o777 if what == "folder" else 0o666)
    out = check(cfg)
    assert out.returncode == 1, out
    text = out.stdout + out.stderr
    assert f"{target} is writable by every user" in text and f"chmod o-w {target}" in text
    run = subprocess.run(
        [sys.executable, "-m", "edgetpud", "run", "--config", str(cfg)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 78, run.stderr[-2000:]
    assert "writable by every user" in run.stderr
    # a sticky shared folder (like /tmp) is not a hole: only owners can replace files there
    if what == "folder":
        target.chmod(0o1777)
        assert check(cfg).returncode == 0
