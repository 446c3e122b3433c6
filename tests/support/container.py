"""A booted Debian 12 container for the system tests: debootstrap + systemd-nspawn -b.

The bootstrap (minbase + systemd) is made once and kept under CACHE, keyed by its package
list and mirror; each run copies it, boots the copy with `systemd-nspawn -b` (systemd 252
as PID 1, sharing the host's network so apt reaches the mirror and the services reach a
broker on the host's loopback) and runs commands in it with nsenter, the way a root shell
on the box would. The copy is deleted at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("EDGETPUD_TEST_CACHE", "/var/cache/edgetpud-test"))
SUITE = "bookworm"
# What a minimal Debian 12 box with systemd has; everything else comes with apt install.
BASE_PACKAGES = ("systemd", "systemd-sysv")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def mirror() -> str:
    """The Debian mirror this machine's apt uses (deb.debian.org when none is configured)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        try:
            text = source.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            m = re.match(r"\s*(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+/debian)/?(\s|$)", line)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def _key(packages: tuple[str, ...], url: str) -> str:
    return hashlib.sha256(f"{SUITE} {url} {' '.join(packages)}".encode()).hexdigest()[:12]


def base(packages: tuple[str, ...] = BASE_PACKAGES) -> tuple[Path, float]:
    """The cached bootstrap folder, made now if missing; (path, seconds spent making it)."""
    url = mirror()
    folder = CACHE / f"{SUITE}-minbase-{_key(packages, url)}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / ".complete").is_file():
            return folder / "root", 0.0
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        started = time.monotonic()
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE,
             str(folder / "root"), url],
            capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(
                f"debootstrap failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        (folder / ".complete").write_text(f"{url}\n{' '.join(packages)}\n")
        return folder / "root", time.monotonic() - started


def base_tarball(packages: tuple[str, ...] = BASE_PACKAGES) -> Path:
    """The same bootstrap as a .tgz, for piuparts --basetgz (made once, kept in CACHE)."""
    root, _ = base(packages)
    tarball = root.parent / "base.tgz"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.is_file():
            tmp = tarball.with_suffix(".partial")
            subprocess.run(
                ["tar", "-C", str(root), "--numeric-owner", "-czf", str(tmp), "."],
                check=True, timeout=600,
            )  # fmt: skip
            tmp.rename(tarball)
    return tarball


class Container:
    """A booted copy of the base; `run()` executes a command in it as root."""

    def __init__(self, base_root: Path, name: str, binds: list[tuple[Path, str, bool]]) -> None:
        self.name = name
        self.work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/var/tmp"))
        self.root = self.work / "root"
        started = time.monotonic()
        subprocess.run(["cp", "-a", "--reflink=auto", str(base_root), str(self.root)], check=True)
        self.copy_seconds = time.monotonic() - started
        self.log_path = self.work / "console.log"
        args = [
            "systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
            f"--machine={name}", f"--directory={self.root}", "--console=passive",
        ]  # fmt: skip
        for source, target, read_only in binds:
            args.append(f"--bind{'-ro' if read_only else ''}={source}:{target}")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.leader = 0

    def wait_booted(self, timeout: float = 180) -> float:
        """Wait until systemd in the container reports running/degraded; the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"systemd-nspawn exited {self.proc.returncode}:\n{self.console()}"
                )
            if not self.leader:
                self.leader = self._find_leader()
            if self.leader:
                state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return time.monotonic() - started
            time.sleep(0.5)
        raise AssertionError(
            f"the container did not boot within {timeout:.0f} s:\n{self.console()}"
        )

    def _find_leader(self) -> int:
        """The container's PID 1 (systemd) as seen from the host: nspawn's child."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return 0
        for pid in children.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except OSError:
                continue
        return 0

    def run(
        self,
        cmd: list[str],
        *,
        check: bool = True,
        timeout: float = 600,
        input: str | None = None,
        cwd: str = "/root",
    ) -> subprocess.CompletedProcess[str]:
        """`cmd` in the container's namespaces, as root, with a login shell's PATH."""
        shell = f"cd {shlex.quote(cwd)} && exec {shlex.join(cmd)}"
        full = [
            "nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net", "--pid",
            "--cgroup", "--root", "--wd",
            "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "HOME=/root", "TERM=dumb",
            "DEBIAN_FRONTEND=noninteractive", "sh", "-c", shell,
        ]  # fmt: skip
        proc = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, check=False, input=input
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in the container, `{shlex.join(cmd)}` exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-5000:]}"
            )
        return proc

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        self.run(["sh", "-c", f"cat > {shlex.quote(path)} && chmod {mode:o} {shlex.quote(path)}"],
                 input=text)  # fmt: skip

    def console(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None and self.leader:
            # systemd in a container powers off on SIGRTMIN+4
            os.kill(self.leader, signal.SIGRTMIN + 4)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()
        shutil.rmtree(self.work, ignore_errors=True)
