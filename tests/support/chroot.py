"""Debian bookworm userlands of other architectures (arm64, armhf), run under qemu-user.

`make test-arm` installs qemu-user-static and binfmt-support; `enable_emulation()`
mounts binfmt_misc and enables the interpreter, so the chroot's own binaries (its
python3, dpkg, apt) run as on a Raspberry Pi, only slower.

The base system comes from `debootstrap --variant=minbase` against the Debian
mirror this machine's apt uses, once per architecture, kept as a tarball under
/var/cache/edgetpud-arm (EDGETPUD_ARM_CACHE overrides). Each test unpacks a
fresh copy, so every run installs the package into a clean system, as a user would.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.debian import DEBIAN_PATH, clean_env, run

QEMU = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}
BASE_PACKAGES = ("python3", "python3-numpy")
CACHE = Path(os.environ.get("EDGETPUD_ARM_CACHE", "/var/cache/edgetpud-arm"))
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def mirror() -> str:
    """The Debian mirror this machine's apt is configured with (deb822 or one-line form)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = path.read_text()
        if re.search(r"^Suites:.*\bbookworm\b", text, re.M):
            match = re.search(r"^URIs:\s*(\S+)", text, re.M)
            if match and "security" not in match.group(1):
                return match.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return "http://deb.debian.org/debian"


def enable_emulation(arch: str) -> None:
    """binfmt_misc mounted and the architecture's qemu interpreter enabled, or a clear error."""
    interpreter = QEMU[arch]
    if not (BINFMT / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    if not (BINFMT / interpreter).exists():
        run(["update-binfmts", "--enable", interpreter])
    status = (BINFMT / interpreter).read_text() if (BINFMT / interpreter).exists() else ""
    if not status.startswith("enabled"):
        raise AssertionError(
            f"{interpreter} is not enabled in binfmt_misc ({status.strip() or 'absent'}): "
            "install qemu-user-static and binfmt-support (make test-arm does)"
        )


def base_tarball(arch: str) -> Path:
    """The cached bookworm minbase tarball for `arch`, made by debootstrap when missing."""
    key = hashlib.sha256(f"{arch} {mirror()} {' '.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    tarball = CACHE / f"bookworm-{arch}-minbase-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=f".{arch}-") as tmp:
        root = Path(tmp) / "root"
        started = time.monotonic()
        run(
            [
                "debootstrap",
                f"--arch={arch}",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "bookworm",
                str(root),
                mirror(),
            ],
            timeout=1800,
        )
        partial = tarball.with_suffix(".partial")
        run(["tar", "-C", str(root), "-cf", str(partial), "."], timeout=600)
        partial.rename(tarball)
        print(f"debootstrap {arch}: {time.monotonic() - started:.0f} s -> {tarball}")
    return tarball


class Chroot:
    """A fresh bookworm system of another architecture, with /proc, /dev and /sys mounted."""

    def __init__(self, arch: str, workdir: Path) -> None:
        self.arch = arch
        self.root = workdir / f"root-{arch}"
        self._mounts: list[Path] = []

    def __enter__(self) -> Chroot:
        enable_emulation(self.arch)
        tarball = base_tarball(self.arch)
        self.root.mkdir(parents=True)
        run(["tar", "-C", str(self.root), "-xf", str(tarball)], timeout=600)
        self._mount("proc", "proc", "-t", "proc", "proc")
        self._mount("sys", "sysfs", "-t", "sysfs", "sysfs")
        self._mount("dev", "/dev", "--bind")
        self._mount("dev/pts", "/dev/pts", "--bind")
        shutil.copy("/etc/resolv.conf", self.root / "etc/resolv.conf")
        # No daemon may start from a maintainer script: there is no init in here.
        policy = self.root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        return self

    def _mount(self, target: str, source: str, *how: str) -> None:
        where = self.root / target
        where.mkdir(parents=True, exist_ok=True)
        if how and how[0] == "-t":
            run(["mount", *how[:2], source, str(where)])
        else:
            run(["mount", *how, source, str(where)])
        self._mounts.append(where)

    def bind(self, source: Path, target: str, *, read_only: bool = True) -> Path:
        """Make a host directory visible inside (read-only by default)."""
        where = self.root / target.lstrip("/")
        where.mkdir(parents=True, exist_ok=True)
        run(["mount", "--bind", str(source), str(where)])
        self._mounts.append(where)
        if read_only:
            run(["mount", "-o", "remount,bind,ro", str(where)])
        return where

    def __exit__(self, *exc: object) -> None:
        for where in reversed(self._mounts):
            run(["umount", "-l", str(where)], check=False)
        self._mounts.clear()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(PATH=DEBIAN_PATH, HOME="/root", **extra)

    def run(
        self, cmd: Sequence[str], *, timeout: float = 900, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(["chroot", str(self.root), *cmd], timeout=timeout, check=check, env=self.env())

    def popen(self, cmd: Sequence[str], log: Path, **extra: str) -> subprocess.Popen[Any]:
        with log.open("wb") as out:
            return subprocess.Popen(
                ["chroot", str(self.root), *cmd],
                env=self.env(**extra),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
            )

    def install_deb(self, deb: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        """`apt install ./the.deb` inside, its dependencies from the mirror, as a user would."""
        inside = self.root / "tmp" / deb.name
        shutil.copy(deb, inside)
        self.run(["apt-get", "update", "-qq"], timeout=timeout)
        return self.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{deb.name}"],
            timeout=timeout,
        )

    def write(self, path: str, text: str) -> Path:
        where = self.root / path.lstrip("/")
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(text)
        return where


@contextlib.contextmanager
def chroot(arch: str, workdir: Path) -> Iterator[Chroot]:
    with Chroot(arch, workdir) as c:
        yield c
