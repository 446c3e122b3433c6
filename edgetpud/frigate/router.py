"""The Frigate endpoint's ZeroMQ ROUTER socket and the thread that owns it.

The only importer of zmq (pyzmq). The thread `frigate:endpoint` takes messages in
batches and hands each to `on_message`; answers are sent by whoever has them (`send`):
the endpoint's thread for what it answers at once, a worker's thread for its result,
so a result leaves without waking another thread. A lock serialises every use of the
socket (a zmq socket may move between threads with a full memory barrier); the
thread waits, without it, on zmq's FD and a wake-up pipe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from edgetpud.config import IPC_PREFIX, FrigateConfig
from edgetpud.errors import EdgetpudError

log = logging.getLogger(__name__)

BATCH = 64  # messages taken from the socket per turn before replies are sent again
POLL_MS = 100  # how often an idle endpoint looks at its stop flag (replies wake it at once)
MAX_MESSAGE_BYTES = 64 << 20  # a 2160x3840x3 frame is 25 MB, Frigate's inputs ~0.3-5 MB


class FrigateError(EdgetpudError):
    """The Frigate endpoint could not be set up (bind, socket permissions)."""


class Router:
    """A ROUTER socket bound to `cfg.endpoint` and its thread.

    `on_message(frames)` runs on the thread for each message (frames: zmq.Frame, routing
    envelope first); `on_sent(arrived, done, now)` after each answer queued with an
    arrival time has left (monotonic seconds).
    """

    def __init__(
        self,
        cfg: FrigateConfig,
        on_message: Callable[[list[Any]], None],
        on_sent: Callable[[float, float, float], None],
        *,
        context: zmq.Context[Any] | None = None,
        poll_ms: int = POLL_MS,
    ) -> None:
        self.cfg = cfg
        self._on_message = on_message
        self._on_sent = on_sent
        self._context = context or zmq.Context.instance()
        self._poll_ms = poll_ms
        self._socket: zmq.Socket[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # guards the socket: its thread reads it, any thread sends on it (a zmq socket may
        # move between threads with a full memory barrier; the lock is that barrier)
        self._lock = threading.Lock()
        self._ident = 0  # the socket thread's
        self._wake_r, self._wake_w = -1, -1

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start the thread; FrigateError saying what to fix if it cannot bind."""
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # a bigger message drops its connection (its client times out): no frame Frigate
        # sends comes near it, and it keeps one client from making the daemon allocate GBs
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        try:
            self._bind(sock)
        except FrigateError:
            sock.close(0)
            raise
        self._socket = sock
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="frigate:endpoint", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread, close the socket, remove the ipc socket file. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._wake()
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            sock, self._socket = self._socket, None
        if sock is not None:
            sock.close(0)
            path = self.ipc_path()
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r, self._wake_w = -1, -1

    def ipc_path(self) -> str:
        endpoint = self.cfg.endpoint
        return endpoint[len(IPC_PREFIX) :] if endpoint.startswith(IPC_PREFIX) else ""

    def _bind(self, sock: zmq.Socket[Any]) -> None:
        endpoint, path = self.cfg.endpoint, self.ipc_path()
        if path:
            folder = os.path.dirname(path) or "/"
            if not os.path.isdir(folder):
                raise FrigateError(
                    f"cannot listen on {endpoint}: the folder {folder} does not exist; create "
                    "it (the packaged unit provides /run/edgetpud) or set frigate.endpoint to "
                    "a socket in an existing folder"
                )
            if not os.access(folder, os.W_OK | os.X_OK):
                raise FrigateError(
                    f"cannot listen on {endpoint}: the folder {folder} is not writable by "
                    "edgetpud's user; use /run/edgetpud (the unit's RuntimeDirectory) or give "
                    "that user write access to it"
                )
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            hint = (
                "another process (a second edgetpud?) already listens there; stop it or "
                "choose another port"
                if exc.errno == zmq.EADDRINUSE
                else "check the address is one of this machine's (or 0.0.0.0) and the port is free"
            )
            raise FrigateError(f"cannot listen on {endpoint}: {exc.strerror}; {hint}") from None
        if path:
            try:
                os.chmod(path, int(self.cfg.socket_mode, 8))
            except OSError as exc:
                raise FrigateError(
                    f"cannot set mode {self.cfg.socket_mode} on {path}: {exc.strerror}"
                ) from None

    # ---- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._ident = threading.get_ident()
        sock = self._socket
        assert sock is not None
        with self._lock:
            zmq_fd = int(sock.getsockopt(zmq.FD))
        waiter = select.poll()
        waiter.register(zmq_fd, select.POLLIN)
        waiter.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            try:
                if not self._serve_batch(sock) and any(
                    fd == self._wake_r for fd, _ in waiter.poll(self._poll_ms)
                ):
                    self._drain_wake()
            except Exception:
                if self._stop.is_set():
                    break
                log.exception("Frigate endpoint: unexpected error; carrying on")
                self._stop.wait(0.01)

    def _serve_batch(self, sock: zmq.Socket[Any]) -> bool:
        """Take up to BATCH messages and handle them; True when more may be waiting.

        The socket is read under the lock and the messages handled outside it, so a
        worker's reply never waits for a message being handled. zmq's FD, which the
        thread waits on, only says the socket's state may have changed and is cleared by
        any thread's use of the socket: so before waiting, EVENTS says whether a message
        is there already (and a worker that finds one after its send wakes the thread).
        """
        recv, again = sock.recv_multipart, zmq.Again
        batch = []
        with self._lock:
            for _ in range(BATCH):
                try:
                    batch.append(recv(zmq.NOBLOCK, copy=False))
                except again:
                    break
        for frames in batch:
            self._on_message(frames)
        if len(batch) == BATCH:
            return True
        with self._lock:
            return _readable(sock)

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    # ---- sending ----------------------------------------------------------------------

    def send(self, envelope: tuple[Any, ...], payload: bytes, arrived: float = 0.0) -> None:
        """From any thread: send at once (a reply to a client gone or too slow to take it
        is dropped); `arrived` (the request's arrival, monotonic) makes `on_sent` see it
        leave."""
        done = time.monotonic()
        other = threading.get_ident() != self._ident
        with self._lock:
            sock = self._socket
            if sock is None:
                return
            with contextlib.suppress(zmq.Again):
                sock.send_multipart([*envelope, payload], zmq.NOBLOCK, copy=False)
            # the send may have taken the FD's signal of a message that came meanwhile (the
            # socket's own thread looks at EVENTS before it waits again)
            pending = other and _readable(sock)
        if pending:
            self._wake()
        if arrived:  # an answered request (not an empty answer)
            self._on_sent(arrived, done, time.monotonic())


def _readable(sock: zmq.Socket[Any]) -> bool:
    """A message waits (this also takes the socket's pending commands, clearing its FD)."""
    return bool(int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def peer(routing: Any) -> str:
    """Who is behind a connection (its routing frame, a zmq.Frame): "pid N (uid U)" over
    ipc, the address over tcp."""
    try:
        address = str(routing.get("Peer-Address"))
    except (zmq.ZMQError, UnicodeDecodeError):
        address = ""
    parts = address.rsplit(":", 3)
    if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):  # ipc: host:uid:gid:pid
        return f"pid {parts[3]} (uid {parts[1]})"
    return address or f"connection {routing.bytes.hex()}"
