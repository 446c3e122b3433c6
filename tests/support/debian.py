"""Helpers for the Debian package tests: build, install, purge, and sd_notify capture.

Every command runs with Debian's PATH and without the test process's umockdev
preload or edgetpud variables, the way an admin's shell would run it.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGE = "edgetpud"
UNIT = ROOT / "systemd" / "edgetpud.service"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a root shell on the box would have (no venv, no umockdev preload)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UMOCKDEV", "EDGETPUD_", "PYTHON", "VIRTUAL_ENV", "LD_"))
    }
    env.update(PATH=DEBIAN_PATH, LC_ALL="C.UTF-8", DEBIAN_FRONTEND="noninteractive")
    env.update(extra)
    return env


def run(
    cmd: Sequence[str], *, timeout: float = 300, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, fail with its whole output so the test log says why."""
    kwargs.setdefault("env", clean_env())
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"`{shlex.join(cmd)}` exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def installed_version() -> str | None:
    proc = run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", PACKAGE], check=False)
    status, _, version = proc.stdout.partition(" ")
    return version if proc.returncode == 0 and status == "installed" else None


def is_known() -> bool:
    """True if dpkg knows the package in any state (installed, config-files, half-installed)."""
    proc = run(["dpkg-query", "-W", "-f=${db:Status-Status}", PACKAGE], check=False)
    return proc.returncode == 0 and proc.stdout not in ("", "not-installed")


def purge() -> subprocess.CompletedProcess[str]:
    return run(["apt-get", "purge", "-y", "-q", PACKAGE], timeout=600)


def apt_install(deb: Path) -> subprocess.CompletedProcess[str]:
    """`apt-get install ./edgetpud_*.deb`, exactly as the README says (path must look local)."""
    return run(["apt-get", "install", "-y", "-q", f"./{deb.name}"], cwd=deb.parent, timeout=600)


def with_version(deb: Path, version: str, out_dir: Path) -> Path:
    """A copy of `deb` whose control file says `version`: a faithful upgrade for dpkg."""
    tree = out_dir / "tree"
    run(["dpkg-deb", "-R", str(deb), str(tree)])
    control = tree / "DEBIAN" / "control"
    lines = [
        f"Version: {version}" if line.startswith("Version:") else line
        for line in control.read_text().splitlines()
    ]
    control.write_text("\n".join(lines) + "\n")
    arch = deb.name.rsplit("_", 1)[1]  # "amd64.deb"
    new = out_dir / f"{PACKAGE}_{version}_{arch}"
    run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(new)])
    return new


def unit_exec_start(unit: Path = UNIT) -> list[str]:
    """The ExecStart= command line of a unit file, split like systemd splits it."""
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.split("=", 1)[1])
    raise AssertionError(f"{unit} has no ExecStart=")


def unit_values(key: str, unit: Path = UNIT) -> list[str]:
    """Every value of `key=` in a unit file, in order."""
    prefix = key + "="
    return [
        line[len(prefix) :].strip()
        for line in unit.read_text().splitlines()
        if line.startswith(prefix)
    ]


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records each message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        path.chmod(0o777)  # the service runs as another user
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="test:notify", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.extend(data.decode(errors="replace").splitlines())

    def saw(self, message: str) -> bool:
        return message in list(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
