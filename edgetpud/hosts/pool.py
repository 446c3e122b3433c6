"""`HostPool`: one device host per device in use, restarted when it dies.

The pool is what the service hands its workers: `open_session(device, model, …)`
returns a `HostSession` in that device's host, starting the host first if need be.
When a host dies (abort, segfault, OOM kill, or killed on purpose after a wedge):

- its sessions' lanes get `HostLost` and hand their requests back (the worker does);
- the next `open_session` for that device starts a new host: at once after the first
  death, then after `RESTART_BACKOFF_S` (0.5 s, 1 s, … doubling up to 8 s);
- after `MAX_DEATHS` deaths within `DEATH_WINDOW_S`, `open_session` raises
  `HostFailed` with the reason ("host for usb:2-1 aborted 3 times in 60 s, the last:
  aborted: …"); the service quarantines the device and the death count starts afresh,
  so the first open after the quarantine gets a new host;
- after a wedge (`recover`), the host is killed and, once it is gone, the device is
  reset (`reset`, e.g. USBDEVFS_RESET on a USB Accelerator: never under a live
  libedgetpu, which would abort on the failed transfers); opens wait for the reset.

Hosts are started from one long-lived thread, the spawner: PR_SET_PDEATHSIG fires when
the *thread* that forked the child ends, so a host started from a worker lane would be
killed when that lane ends. A host whose last session closes is closed too, so a
device no model uses is not held open.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetpud.errors import DeviceError
from edgetpud.hosts.process import DeviceHost, Spawn, popen
from edgetpud.hosts.session import HostSession

log = logging.getLogger(__name__)

MAX_DEATHS = 3
DEATH_WINDOW_S = 60.0
RESTART_BACKOFF_S = 0.5  # before the 2nd restart within the window; doubles, at most 8 s
RESTART_BACKOFF_MAX_S = 8.0
# After giving up, every open for this long raises HostFailed (all the lanes that were
# waiting to reopen, not just the first); the next open after it starts a fresh host.
FAILED_HOLD_S = 2.0
MAX_MODEL_INFOS = 64  # model files whose parsed facts are kept (a config names a few)

Reset = Callable[[str], str]  # device identity -> what was done ("" when nothing could be)


class HostFailed(DeviceError):
    """A device's host died too often: it is not restarted until the device is tried again."""


@dataclass
class _Slot:
    """What the pool knows about one device."""

    host: DeviceHost | None = None
    starting: bool = False
    deaths: collections.deque[float] = field(default_factory=collections.deque)
    not_before: float = 0.0
    failed: str = ""
    failed_until: float = 0.0
    reset_pending: str = ""  # why: set by recover(), the reset runs once the host is gone
    closing: DeviceHost | None = None  # an idle host still exiting: it holds the device
    resetting: bool = False
    restarts: int = 0
    deaths_total: int = 0
    last_exit: str = ""


@dataclass(frozen=True)
class HostStatus:
    """One host, as health and `edgetpud status` show it."""

    device: str
    pid: int
    state: str  # "running", "starting", "restarting", "resetting", "failed", "stopped"
    restarts: int
    deaths: int  # exits edgetpud did not ask for (abort, crash, kill), since the start
    last_exit: str
    sessions: int


class _Spawner:
    """The thread that starts every host (see the module docstring: PR_SET_PDEATHSIG)."""

    def __init__(self, spawn: Spawn) -> None:
        self._spawn = spawn
        self._jobs: queue.SimpleQueue[tuple[Future[Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="hosts:spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._spawn(*args))
                except BaseException as exc:
                    future.set_exception(exc)

    def __call__(self, *args: Any) -> Any:
        future: Future[Any] = Future()
        self._jobs.put((future, args))
        return future.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(5.0)


class HostPool:
    """The device hosts of one daemon."""

    def __init__(
        self,
        *,
        spawn: Spawn = popen,
        reset: Reset | None = None,
        runtime: str = "auto",
        log_level: str = "INFO",
        on_exit: Callable[[str, str], None] | None = None,
        max_deaths: int = MAX_DEATHS,
        death_window: float = DEATH_WINDOW_S,
    ) -> None:
        self._spawner = _Spawner(spawn)
        self._reset = reset
        self._runtime = runtime
        self._log_level = log_level
        self._on_exit = on_exit  # (device, reason) for a host that died unasked
        self._max_deaths = max_deaths
        self._window = death_window
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._slots: dict[str, _Slot] = {}
        self._closers: list[threading.Thread] = []  # closing idle hosts
        self._closed = False
        # path -> (its stat key, ModelInfo): every lane of every host restart opens the
        # same few files; reading and parsing one (up to MBs, in that lane's thread and
        # malloc arena) each time cost CPU and left RSS high (docs/reliability.md "Soak")
        self._infos: dict[Path, tuple[tuple[int, ...], Any]] = {}

    # -- sessions -----------------------------------------------------------------------

    def open_session(
        self,
        device: str,
        model: Path,
        *,
        info: Any = None,
        library: str = "libedgetpu.so.1",
        performance: str = "std",
        cpu_threads: int = 2,
        prefer: str = "auto",
    ) -> HostSession:
        """An interpreter of `model` on `device` ("cpu" or an identity) in its host.

        Raises what `edgetpud.runtime.open_session` raises, HostFailed when the device's
        host keeps dying, HostLost when it dies during the open."""
        model = Path(model)
        if info is None or getattr(info, "path", None) != model:
            info = self._model_info(model)
        options = {
            "library": library,
            "performance": performance,
            "cpu_threads": cpu_threads,
            "prefer": prefer,
        }
        host = self._host(device)  # counted in host.opening until the open ends
        try:
            session = host.open(model, info, options)
        finally:
            with self._lock:
                host.opening -= 1
            self._close_if_idle(host)
        session._on_close = lambda: self._session_closed(host)
        return session

    def _model_info(self, model: Path) -> Any:
        """The model's ModelInfo, read again only when the file changed (another inode,
        size or mtime): a reload that replaces a model file gets the new one."""
        from edgetpud.modelfile import inspect_model as inspect

        try:
            st = model.stat()
        except OSError:
            return inspect(model)  # it says what is wrong with the path
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._infos.get(model)
        if cached is not None and cached[0] == key:
            return cached[1]
        info = inspect(model)
        with self._lock:
            self._infos.pop(model, None)
            self._infos[model] = (key, info)
            while len(self._infos) > MAX_MODEL_INFOS:  # paths a reload dropped: oldest first
                del self._infos[next(iter(self._infos))]
        return info

    def _host(self, device: str) -> DeviceHost:
        """The device's running host: started now, or once its restart backoff is over."""
        with self._changed:
            slot = self._slots.setdefault(device, _Slot())
            while True:
                if self._closed:
                    raise DeviceError("edgetpud is stopping: no new sessions")
                if slot.failed:
                    if time.monotonic() < slot.failed_until:
                        raise HostFailed(slot.failed)
                    slot.failed = ""
                if slot.host is not None and slot.host.alive:
                    slot.host.opening += 1
                    return slot.host
                wait = slot.not_before - time.monotonic()
                # a host closing for want of sessions still has the device open: a new one
                # started now would find it busy ("in use by another process": our own)
                closing = slot.closing is not None and not slot.closing.exited
                if slot.starting or slot.reset_pending or slot.resetting or wait > 0 or closing:
                    # (bounded while a host closes: its exit is polled too, not only told)
                    self._changed.wait(wait if wait > 0 else (0.2 if closing else None))
                    continue
                slot.starting = True
                restart = slot.host is not None
                break
        try:
            host = DeviceHost(
                device,
                spawn=self._spawner,
                on_exit=self._host_exited,
                runtime=self._runtime,
                log_level=self._log_level,
            ).start()
        except BaseException:
            with self._changed:
                slot.starting = False
                self._changed.notify_all()
            raise
        with self._changed:
            slot.starting = False
            slot.host = host
            host.opening += 1
            if restart:
                slot.restarts += 1
            self._changed.notify_all()
        return host

    def _session_closed(self, host: DeviceHost) -> None:
        with self._lock:
            host.sessions -= 1
        self._close_if_idle(host)

    def _close_if_idle(self, host: DeviceHost) -> None:
        """Close a host with no session left and none being opened (another model's lane
        may be opening one in it right now: closing then would strand that open)."""
        with self._lock:
            idle = host.sessions <= 0 and host.opening <= 0 and host.alive
            slot = self._slots.get(host.device)
            if idle and slot is not None and slot.host is host:
                slot.host = None
                slot.closing = host
        if idle:
            log.debug("host for %s has no session left; closing it", host.device)
            closer = threading.Thread(
                target=host.close, name=f"hosts:close:{host.device}", daemon=True
            )
            with self._lock:
                self._closers = [t for t in self._closers if t.is_alive()]
                self._closers.append(closer)
            closer.start()

    def _host_exited(self, host: DeviceHost) -> None:
        """From the host's watcher thread once it is reaped."""
        now = time.monotonic()
        with self._changed:
            slot = self._slots.get(host.device)
            if slot is None:
                return
            slot.last_exit = host.exit_reason
            if slot.closing is host:
                slot.closing = None
            if slot.reset_pending and not slot.resetting:
                slot.resetting = True
                threading.Thread(
                    target=self._reset_device,
                    args=(host.device, slot),
                    name=f"hosts:reset:{host.device}",
                    daemon=True,
                ).start()
            if host.expected_exit:
                self._changed.notify_all()
                return
            slot.deaths_total += 1
            deaths = slot.deaths
            deaths.append(now)
            while deaths and now - deaths[0] > self._window:
                deaths.popleft()
            if len(deaths) >= self._max_deaths:
                slot.failed = (
                    f"host for {host.device} died {len(deaths)} times in "
                    f"{self._window:.0f} s, the last: {host.exit_reason}"
                )
                if host.device.startswith("pci:") and host.kill_reason:
                    slot.failed += (
                        "; a PCIe module that keeps wedging is reset by reloading its driver "
                        "(`modprobe -r apex gasket && modprobe apex`, with no process using "
                        "/dev/apex_*) or by a reboot"
                    )
                deaths.clear()
                slot.not_before = 0.0
                slot.failed_until = now + FAILED_HOLD_S
            elif len(deaths) > 1:
                backoff = min(RESTART_BACKOFF_S * 2 ** (len(deaths) - 2), RESTART_BACKOFF_MAX_S)
                slot.not_before = now + backoff
            self._changed.notify_all()
        if self._on_exit is not None:
            self._on_exit(host.device, f"host for {host.device} {host.exit_reason}")

    # -- control, from the service -------------------------------------------------------

    def _reset_device(self, device: str, slot: _Slot) -> None:
        """After a wedged host is gone: reset the device, then let opens go on."""
        why = slot.reset_pending
        try:
            if self._reset is None:
                log.info("%s: no reset for this device; reopening it as it is", device)
            else:
                log.warning("resetting %s (%s)", device, why)
                done = self._reset(device)
                log.warning("%s: %s", device, done or "no reset is possible; reopening it as it is")
        except Exception as exc:
            log.error("%s: the reset failed: %s; reopening it as it is", device, exc)
        finally:
            with self._changed:
                slot.reset_pending = ""
                slot.resetting = False
                self._changed.notify_all()

    def recover(self, device: str, why: str) -> bool:
        """A wedged invoke on `device`: kill its host (its lanes get HostLost); once it is
        gone the device is reset, and opens wait for that. False when it has no host."""
        with self._lock:
            slot = self._slots.get(device)
            host = slot.host if slot is not None else None
            if slot is None or host is None or not host.alive:
                return False
            slot.reset_pending = why
        host.kill(why)
        return True

    def replugged(self, device: str) -> None:
        """`device` was unplugged or plugged in: a new device on that port. Forget how often
        its hosts died (a host dies when its device is pulled during an invoke, as
        libedgetpu aborts), so that those deaths do not count towards giving up on the
        device that comes next."""
        with self._changed:
            slot = self._slots.get(device)
            if slot is None:
                return
            slot.deaths.clear()
            slot.not_before = 0.0
            slot.failed = ""
            slot.failed_until = 0.0
            self._changed.notify_all()

    def snapshot(self) -> list[HostStatus]:
        out = []
        with self._lock:
            for device, slot in sorted(self._slots.items()):
                host = slot.host
                if slot.failed:
                    state = "failed"
                elif slot.reset_pending or slot.resetting:
                    state = "resetting"
                elif slot.starting:
                    state = "starting"
                elif host is not None and host.alive:
                    state = "running"
                elif host is not None:
                    state = "restarting"
                else:
                    state = "stopped"
                out.append(
                    HostStatus(
                        device=device,
                        pid=host.pid if host is not None and host.alive else 0,
                        state=state,
                        restarts=slot.restarts,
                        deaths=slot.deaths_total,
                        last_exit=slot.last_exit,
                        sessions=host.sessions if host is not None else 0,
                    )
                )
        return out

    def pids(self) -> list[int]:
        with self._lock:
            return [s.host.pid for s in self._slots.values() if s.host and s.host.alive]

    def close(self) -> None:
        """Close every host (their interpreters close, the processes exit). Idempotent."""
        with self._changed:
            self._closed = True
            hosts = [s.host for s in self._slots.values() if s.host is not None]
            self._changed.notify_all()
        for host in hosts:
            host.close()
        with self._lock:
            closers = list(self._closers)
        for closer in closers:  # before the spawner ends: its end kills what it started
            closer.join()
        self._spawner.close()
