"""`DeviceHost`: one host process, seen from the daemon.

It starts `python -m edgetpud.hosts` through a spawner (a long-lived thread, see
`edgetpud.hosts.pool`), waits for its READY, opens sessions in it, keeps the last
lines of its stderr (re-logged here as `host <device>[pid]: …`) and, when the process
ends, records why: "aborted", "was killed (SIGKILL)", "crashed (SIGSEGV)", "exited
with status 1", each with the last thing it wrote to stderr.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import edgetpud
from edgetpud.errors import DeviceError
from edgetpud.hosts import wire
from edgetpud.hosts.session import HostLost, HostSession
from edgetpud.hosts.slots import Layout, Slot

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0  # importing numpy and the runtime on a loaded 2-core box
OPEN_TIMEOUT_S = 120.0  # a firmware upload and a big parameter transfer
CLOSE_TIMEOUT_S = 5.0
STDERR_TAIL = 20

# Lines that never explain a death: the host's own routine log lines, TFLite's "INFO:
# Created TensorFlow Lite delegate…", and the frames of a Python traceback.
_NOT_A_REASON = ("INFO", "DEBUG", "File ", "Traceback", "^", "~")

Spawn = Callable[[list[str], int, int], "subprocess.Popen[bytes]"]


class HostStartFailed(DeviceError):
    """A host process could not be started or did not come up."""


def importable_in_children() -> None:
    """Make `python -m edgetpud.hosts` find this very edgetpud (a source checkout, say).

    Through os.environ, which also sets the C environment: hosts inherit that one whole
    (env=None), including what C code put there (umockdev's UMOCKDEV_DIR in tests)."""
    root = str(Path(edgetpud.__file__).resolve().parents[1])
    paths = os.environ.get("PYTHONPATH", "")
    if root not in paths.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, paths) if p)


def popen(argv: list[str], pass_fd: int, out_fd: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        pass_fds=(pass_fd,),
        # stdin is inherited (systemd gives /dev/null); the host never reads it. Not
        # DEVNULL: under umockdev's preload every open of /dev/null leaks a socket.
        stdout=out_fd,
        stderr=out_fd,
    )


def describe_exit(returncode: int) -> str:
    """How a host ended, as a reason reads: "aborted", "was killed (SIGKILL)", …"""
    if returncode == 0:
        return "exited"
    if returncode > 0:
        return f"exited with status {returncode}"
    sig = -returncode
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    if sig == signal.SIGABRT:
        return "aborted"
    if sig == signal.SIGKILL:
        return "was killed (SIGKILL; the kernel's OOM killer, or edgetpud after a wedge)"
    if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
        return f"crashed ({name})"
    return f"died of {name}"


class DeviceHost:
    """One `python -m edgetpud.hosts` process for one device."""

    _sids = itertools.count(1)

    def __init__(
        self,
        device: str,
        *,
        spawn: Spawn = popen,
        on_exit: Callable[[DeviceHost], None] | None = None,
        runtime: str = "auto",
        log_level: str = "INFO",
        python: str = sys.executable,
    ) -> None:
        self.device = device
        self.pid = 0
        self.started = 0.0
        self.runtime = ""
        self.returncode: int | None = None
        self.exit_reason = ""  # "aborted: <last stderr line>" once it has ended
        self.expected_exit = False  # ended because edgetpud closed it (set once reaped)
        self._closing = False
        self._killed_closing = False
        self._doomed = False  # kill() was called: no new sessions
        self.kill_reason = ""
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.sessions = 0
        self.opening = 0  # opens in progress: the pool keeps a host with one from closing
        self._spawn = spawn
        self._on_exit = on_exit
        self._runtime_pref = runtime
        self._log_level = log_level
        self._python = python
        self._control: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._exited = threading.Event()
        self._watcher: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<DeviceHost {self.device} pid {self.pid}>"

    @property
    def exited(self) -> bool:
        """The process has ended and been reaped (its device is free again)."""
        return self._exited.is_set()

    @property
    def alive(self) -> bool:
        """Running and usable: not ended, and not being killed."""
        return self._proc is not None and not self._exited.is_set() and not self._doomed

    def start(self) -> DeviceHost:
        """Start the process and wait for its READY. Raises HostStartFailed."""
        control, child = wire.pair()
        rfd, wfd = os.pipe()
        importable_in_children()
        argv = [
            self._python,
            "-m",
            "edgetpud.hosts",
            "--control-fd",
            str(child.fileno()),
            "--device",
            self.device,
            "--parent",
            str(os.getpid()),
            "--runtime",
            self._runtime_pref,
            "--log-level",
            self._log_level,
        ]
        try:
            self._proc = self._spawn(argv, child.fileno(), wfd)
        except OSError as exc:
            control.close()
            raise HostStartFailed(
                f"could not start a host process for {self.device} ({exc}): check that "
                f"{self._python} runs and that the service may start processes"
            ) from None
        finally:
            child.close()
            os.close(wfd)
        self.pid = self._proc.pid
        self.started = time.monotonic()
        self._control = control
        self._watcher = threading.Thread(
            target=self._watch, args=(rfd,), name=f"host-watch:{self.device}", daemon=True
        )
        self._watcher.start()
        control.settimeout(READY_TIMEOUT_S)
        try:
            kind, body, _ = wire.recv(control)
        except (OSError, ValueError):
            kind, body = b"", None
        control.settimeout(None)
        if kind != wire.READY:
            self.kill("did not come up")
            self._exited.wait(CLOSE_TIMEOUT_S)
            raise HostStartFailed(
                f"the host process for {self.device} did not start: {self.describe()}"
            )
        self.runtime = str(body.get("runtime", ""))
        log.info(
            "host for %s started (pid %d, %s)", self.device, self.pid, self.runtime or "no runtime"
        )
        return self

    def _watch(self, rfd: int) -> None:
        """Re-log the host's stderr, keep its tail; once it closes, reap and report."""
        prefix = f"host {self.device}[{self.pid}]"
        with os.fdopen(rfd, "rb") as stream:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    self.tail.append(line)
                    log.info("%s: %s", prefix, line)
        assert self._proc is not None
        self.returncode = self._proc.wait()
        # Closed by us: it exits 0, or is killed when it overstays. Anything else (a signal
        # while we were closing it, say) is a death like any other.
        self.expected_exit = self._closing and (self.returncode == 0 or self._killed_closing)
        last = self.last_line()
        how = describe_exit(self.returncode)
        if self.kill_reason:
            how = f"{how}, {self.kill_reason}"
        self.exit_reason = f"{how}: {last}" if last and self.returncode else how
        with self._lock:
            control, self._control = self._control, None
        if control is not None:
            control.close()
        level = logging.INFO if self.expected_exit else logging.ERROR
        log.log(level, "host for %s (pid %d) %s", self.device, self.pid, self.exit_reason)
        try:
            if self._on_exit is not None:  # before anyone waiting for the exit goes on
                self._on_exit(self)
        finally:
            self._exited.set()

    def last_line(self) -> str:
        """The last line the host wrote to stderr that says something (not a traceback frame)."""
        for line in reversed(self.tail):
            text = line.strip()
            if text and not text.startswith(_NOT_A_REASON):
                return text
        return ""

    def describe(self) -> str:
        """Why the host ended ("aborted: …"), or that it runs."""
        if not self._exited.is_set():
            return f"running (pid {self.pid})"
        return self.exit_reason

    def lost_reason(self) -> str:
        """For a session whose socket closed: wait for the exit, then `host for D …`."""
        if not self._exited.wait(CLOSE_TIMEOUT_S):
            # a lane's socket closed while the process lives: its state is unknown
            self.kill("lost a session")
            self._exited.wait(CLOSE_TIMEOUT_S)
        return f"host for {self.device} {self.describe()}"

    def wait(self, timeout: float | None = None) -> bool:
        """True once the process has ended and been reaped."""
        return self._exited.wait(timeout)

    def open(self, model: Path, info: Any, options: dict[str, Any]) -> HostSession:
        """Open one interpreter of `model` in this host. Raises what runtime.open_session
        raises in the host (rebuilt here), or HostLost when the host dies meanwhile."""
        layout = Layout.for_specs(info.inputs, info.outputs)
        slot = Slot.create(layout, f"edgetpud-{self.device}-{info.path.name}")
        ours, theirs = wire.pair()
        sid = next(self._sids)
        body = {
            "sid": sid,
            "model": str(model),
            "device": self.device,
            "options": options,
            "layout": layout.to_wire(),
        }
        try:
            with self._lock:
                control = self._control
                if control is None:
                    raise HostLost(self.device, self.pid, self.lost_reason(), sent=False)
                try:
                    wire.send(control, wire.OPEN, body, (theirs.fileno(), slot.fd))
                except OSError:
                    raise HostLost(self.device, self.pid, self.lost_reason(), sent=False) from None
            theirs.close()
            ours.settimeout(OPEN_TIMEOUT_S)
            try:
                kind, reply, _ = wire.recv(ours)
            except TimeoutError:
                self.kill(f"opening {info.path.name} took longer than {OPEN_TIMEOUT_S:.0f} s")
                kind, reply = b"", None
            except OSError:
                kind, reply = b"", None
            ours.settimeout(None)
            if kind == wire.ERROR:
                raise wire.exception_from_wire(reply)
            if kind != wire.OPENED:
                raise HostLost(self.device, self.pid, self.lost_reason(), sent=False)
        except BaseException:
            theirs.close()
            ours.close()
            slot.close()
            raise
        with self._lock:
            self.sessions += 1
        return HostSession(
            info,
            self.device,
            ours,
            slot,
            pid=self.pid,
            delegate_device=str(reply.get("delegate_device", "")),
            lost=self.lost_reason,
        )

    def kill(self, reason: str = "") -> None:
        """SIGKILL the process (a wedge, a hang at start); `reason` goes into its exit reason."""
        self._doomed = True
        if reason and not self.kill_reason:
            self.kill_reason = f"killed by edgetpud: {reason}"
        proc = self._proc
        if proc is not None and proc.returncode is None and not self._exited.is_set():
            with contextlib.suppress(OSError):
                proc.kill()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """End the host: close its control socket (it closes its interpreters and exits),
        SIGKILL it if it has not after `timeout`, and reap it. Idempotent."""
        self._closing = True
        with self._lock:
            control, self._control = self._control, None
        if control is not None:
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_RDWR)
            control.close()
        if self._proc is None:
            return
        if not self._exited.wait(timeout):
            log.warning(
                "host for %s (pid %d) did not exit within %.0f s of being closed; killing it",
                self.device,
                self.pid,
                timeout,
            )
            self._killed_closing = True
            self.kill()
            self._exited.wait(timeout)
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout)
