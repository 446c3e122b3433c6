"""Frigate's `zmq` detector protocol: a ZeroMQ endpoint in front of one edgetpud model.

Frigate (0.16+) can hand each frame's input tensor to an external process through
its `zmq` detector (`frigate/detectors/plugins/zmq_ipc.py`, docs/frigate.md has the
protocol as that file implements it): a REQ socket sends two frames, a JSON header
(`shape`, `dtype`, `model_type`) and the raw C-order tensor, and waits
`request_timeout_ms` (200) for either one frame of 480 bytes or a header and the
bytes of a float32 [20, 6] array, rows `[class_id, score, y_min, x_min, y_max,
x_max]` with boxes normalised to 0..1. On a timeout it resets its socket and counts
no detections. Newer Frigate first sends a one-frame `{"model_request": true}` and
waits up to 30 s for `{"model_available": true, "model_loaded": true}`.

`FrigateEndpoint` binds a ROUTER socket, so any number of Frigate detector processes
(or Frigate instances) can be connected at once; each request goes on the model's
queue, where every worker serving the model (replicas, CPU fallback) takes from, and
is answered when it finishes, in whatever order requests finish. It talks to the
model only through a `ModelPort` (submit a Request whose `reply` is the endpoint's,
ask whether the model can serve now), so it runs against a bare queue and worker in
tests as well as inside the daemon.

What it promises Frigate:
- a request the model cannot serve soon (no worker running it, queue full) is
  answered with no detections at once, never left to Frigate's timeout;
- a frame whose shape or type is not the model's input is answered with no
  detections and logged (or stretched to fit, `on_mismatch = "resize"`);
- a request still waiting when its client's timeout has certainly passed is dropped
  unanswered: Frigate has already counted it as nothing, and late work would only
  delay the requests behind it.

This module is the only importer of zmq (pyzmq). The ROUTER socket is used only by
its own thread; worker threads hand replies over through a deque and a pipe.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import zmq

from edgetpud import modelfile
from edgetpud.config import IPC_PREFIX, Config, FrigateConfig
from edgetpud.daemon.events import Publish
from edgetpud.daemon.ports import ComponentContext
from edgetpud.errors import EdgetpudError
from edgetpud.messages import Request, Result
from edgetpud.snapshot import ModelState, Snapshot

log = logging.getLogger(__name__)

ROWS, COLUMNS = 20, 6  # Frigate's detection array: [class_id, score, y_min, x_min, y_max, x_max]
EMPTY_REPLY = bytes(ROWS * COLUMNS * 4)  # no detections, the one-frame reply form
MAX_CLIENTS = 64  # clients remembered for health; the longest idle is forgotten first
BATCH = 64  # messages taken from the socket per turn before replies are sent again
POLL_MS = 100  # how often an idle endpoint looks at its stop flag (replies wake it at once)
MAX_MESSAGE_BYTES = 64 << 20  # a 2160x3840x3 frame is 25 MB, Frigate's inputs ~0.3-5 MB
LATENCY_WINDOW = 256  # answered requests whose hand-off times health reports
WARN_EVERY_S = 60.0  # one log line per client and problem at most this often
EVENT_GAP_S = 1.0  # "frigate_client" events at most this often (Frigate reconnects a lot)
# A model that answered a request this recently is taken to be serving whatever the port
# says: the daemon's port reads the latest state snapshot, which can lag a worker that
# has just opened by up to its refresh interval (0.5 s); longer would keep taking
# requests for a model that has just stopped, which then time out in Frigate.
RECENTLY_SERVED_S = 0.5

OUTCOMES = ("answered", "empty", "expired")  # what became of each request, per client
EventSink = Callable[[str, Mapping[str, Any]], None]


class FrigateError(EdgetpudError):
    """The Frigate endpoint could not be set up (bind, socket permissions)."""


class ServedModel(Protocol):
    """What the port reads of the model that serves Frigate (the daemon's ModelRuntime fits)."""

    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> Any: ...  # workers.ModelQueue
    @property
    def info(self) -> Any: ...  # modelfile.ModelInfo; None before it was inspected
    @property
    def workers(self) -> Mapping[str, Any]: ...  # target -> workers.Worker
    @property
    def disabled(self) -> str: ...


class ModelPort:
    """The endpoint's one way into the daemon: the model named `model`, looked up afresh
    each time through `lookup` (a reload may replace it), and its queue."""

    def __init__(self, model: str, lookup: Callable[[], ServedModel | None]) -> None:
        self.model = model
        self._lookup = lookup

    def info(self) -> Any:
        """The model's ModelInfo, or None when it is not configured or not inspected."""
        served = self._lookup()
        return served.info if served is not None else None

    def unavailable(self) -> str:
        """ "" when a running worker will take the next request; else why not."""
        served = self._lookup()
        if served is None:
            return f"model {self.model} is not configured"
        if served.disabled:
            return f"model {self.model} is disabled: {served.disabled}"
        workers = list(served.workers.values())
        if any(w.state == "running" for w in workers):
            return ""
        if workers:
            return f"model {self.model} is starting on {', '.join(sorted(served.workers))}"
        return (
            f"model {self.model} has no device to run on (no usable Edge TPU for it and no "
            "cpu_model); `edgetpud status` says why"
        )

    def submit(self, request: Request) -> str:
        """Queue `request` without waiting; "" when queued, else why not."""
        served = self._lookup()
        if served is None:
            return f"model {self.model} is not configured"
        if served.queue.put(request, timeout=0.0):
            return ""
        return f"model {self.model}'s queue is full ({served.queue.maxsize} waiting)"


@dataclass
class ClientStats:
    """One Frigate client: a detector process (ipc: by pid) or a host (tcp: by address)."""

    client: str  # "pid 1234 (uid 0)" over ipc, the peer address over tcp
    connections: int = 0  # distinct sockets seen (Frigate opens a new one after a timeout)
    requests: int = 0  # frames received
    answered: int = 0  # answered with the model's detections
    empty: int = 0  # answered at once with no detections (no device, mismatch, busy, error)
    expired: int = 0  # dropped unanswered: its timeout had passed before a device took it
    mismatched: int = 0  # frames whose shape or type is not the model's input (part of empty)
    detector_model: str = ""  # the model file Frigate's handshake named
    last_empty: str = ""  # why the last empty reply was empty
    first_seen: float = 0.0  # time.time()
    last_seen: float = 0.0  # time.time()


@dataclass(frozen=True)
class _Pending:
    """Where one request's answer goes."""

    envelope: tuple[Any, ...]  # routing frames up to and including the empty delimiter
    client: ClientStats
    width: int  # the frame Frigate sent, for normalising boxes
    height: int


class FrigateEndpoint:
    """A ROUTER socket bound to `cfg.endpoint`, serving `cfg.model` through `port`.

    `start()` binds (raises FrigateError saying what to fix) and starts the thread
    `frigate:endpoint`; `close()` stops it and removes the ipc socket file. `snapshot()`
    is the health view. `on_event(kind, fields)` receives "frigate_client" (a client
    seen for the first time) and "frigate_unavailable" / "frigate_available" (the model
    stopped / started serving); it is called from the endpoint's thread and must not block.
    """

    def __init__(
        self,
        cfg: FrigateConfig,
        port: ModelPort,
        *,
        on_event: EventSink | None = None,
        context: zmq.Context[Any] | None = None,
        poll_ms: int = POLL_MS,
    ) -> None:
        self.cfg = cfg
        self._poll_ms = poll_ms
        self.port = port
        self._on_event = on_event
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards the counters below and the clients
        self._clients: collections.OrderedDict[str, ClientStats] = collections.OrderedDict()
        self._peers: collections.OrderedDict[bytes, ClientStats] = collections.OrderedDict()
        # (routing envelope, reply, when the request arrived, when its result came), monotonic
        self._outbox: collections.deque[tuple[tuple[Any, ...], bytes, float, float]] = (
            collections.deque()
        )
        # per answered request, ms, the latest LATENCY_WINDOW for health: arrival -> a
        # worker took it; result -> reply sent; arrival -> reply sent
        self._queue_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._reply_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._total_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._woken = False
        self._wake_r, self._wake_w = -1, -1
        self._warned: dict[tuple[str, str], float] = {}
        self._last_event = 0.0
        self._events_held = 0
        self._unavailable = ""  # why the last request was refused for want of a device
        self._served_at = -RECENTLY_SERVED_S  # time.monotonic() of the last detections sent
        self.state = "stopped"  # "listening", "failed", "stopped"
        self.error = ""
        self.totals = collections.Counter[str]()

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start serving; FrigateError (logged by the caller) if it cannot bind."""
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # a bigger message drops its connection (its client times out): no frame Frigate
        # sends comes near it, and it keeps one client from making the daemon allocate GBs
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        try:
            self._bind(sock)
        except FrigateError as exc:
            sock.close(0)
            self.state, self.error = "failed", str(exc)
            raise
        self._socket = sock
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop.clear()
        self.state, self.error = "listening", ""
        self._thread = threading.Thread(target=self._run, name="frigate:endpoint", daemon=True)
        self._thread.start()
        log.info(
            "Frigate endpoint listening on %s for model %s (request timeout %g ms)",
            self.cfg.endpoint,
            self.port.model,
            self.cfg.request_timeout * 1000,
        )

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread, close the socket, remove the ipc socket file. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._wake()
            self._thread.join(timeout)
            self._thread = None
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
            path = self._ipc_path()
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r, self._wake_w = -1, -1
        if self.state == "listening":
            self.state = "stopped"

    def _ipc_path(self) -> str:
        endpoint = self.cfg.endpoint
        return endpoint[len(IPC_PREFIX) :] if endpoint.startswith(IPC_PREFIX) else ""

    def _bind(self, sock: zmq.Socket[Any]) -> None:
        endpoint, path = self.cfg.endpoint, self._ipc_path()
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

    # ---- the endpoint's thread --------------------------------------------------------

    def _run(self) -> None:
        sock = self._socket
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        recv, again = sock.recv_multipart, zmq.Again
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(self._poll_ms))
                if self._wake_r in ready:
                    self._drain_wake()
                if sock in ready:
                    for _ in range(BATCH):
                        try:
                            frames = recv(zmq.NOBLOCK, copy=False)
                        except again:
                            break
                        self._on_message(frames)
                self._send_replies(sock)
            except Exception:
                if self._stop.is_set():
                    break
                log.exception("Frigate endpoint: unexpected error; carrying on")
                self._stop.wait(0.01)

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        """Empty the wake pipe, then clear the flag; the caller sends the outbox after.

        In this order a reply is never stranded: one queued before the flag is cleared is
        in the outbox the caller empties next; one queued after it writes a new byte.
        (Clearing first lost replies: a byte written between the clear and the read was
        read here, leaving the flag set with nothing in the pipe, so the next reply did
        not wake the thread and waited for POLL_MS.)
        """
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
        self._woken = False

    def _send_replies(self, sock: zmq.Socket[Any]) -> None:
        outbox, send = self._outbox, sock.send_multipart
        while outbox:
            envelope, payload, arrived, done = outbox.popleft()
            with contextlib.suppress(zmq.Again):
                send([*envelope, payload], zmq.NOBLOCK, copy=False)
            if arrived:  # an answered request (not an empty answer)
                now = time.monotonic()
                self._reply_ms.append((now - done) * 1000.0)
                self._total_ms.append((now - arrived) * 1000.0)

    def _reply_later(
        self, envelope: tuple[Any, ...], payload: bytes, arrived: float = 0.0, queue_ms: float = 0.0
    ) -> None:
        """From any thread: queue a reply for the endpoint's thread to send."""
        self._outbox.append((envelope, payload, arrived, time.monotonic()))
        if arrived:
            self._queue_ms.append(queue_ms)
        if not self._woken:
            self._woken = True
            self._wake()

    # ---- requests ---------------------------------------------------------------------

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        received = time.monotonic()
        split = next((i for i, f in enumerate(frames) if not len(f)), -1) + 1
        if split == 0:  # no delimiter: not a REQ (or DEALER speaking REQ's envelope) client
            self.totals["malformed"] += 1
            return
        envelope, body = tuple(frames[:split]), frames[split:]
        client = self._client(frames[0])
        if len(body) == 1:
            self._on_control(envelope, body[0].bytes, client)
            return
        with self._lock:
            client.requests += 1
            client.last_seen = time.time()
            self.totals["requests"] += 1
        if len(body) != 2:
            self._empty(
                envelope, client, f"{len(body)} frames; Frigate sends a header and a tensor"
            )
            return
        try:
            header = json.loads(body[0].bytes)
            shape = [int(d) for d in header["shape"]]
            dtype = np.dtype(str(header["dtype"]))
            if not shape or len(shape) > 8 or any(d < 1 for d in shape):
                raise ValueError(f"shape {shape} is not a tensor's")
            if dtype.kind not in "uif":
                raise ValueError(f"dtype {dtype.name} is not a number type")
        except (ValueError, KeyError, TypeError) as exc:
            self._empty(envelope, client, f"unreadable header ({exc})")
            return
        why = self.port.unavailable()
        if why and received - self._served_at < RECENTLY_SERVED_S:
            why = ""  # the port's view lags: the model answered moments ago
        if why:
            self._set_unavailable(why)
            self._empty(envelope, client, why)
            return
        if self._unavailable:
            self._set_unavailable("")
        array, width, height = self._frame(body[1], shape, dtype, client)
        if array is None:
            return self._empty(envelope, client, "", counted=True)
        request = Request(
            model=self.port.model,
            payload=array,
            kind="array",
            source="frigate",
            meta={"frigate": _Pending(envelope, client, width, height)},
            received_mono=received,
            deadline=received + self.cfg.request_timeout,
            reply=self._on_result,
        )
        why = self.port.submit(request)
        if why:
            self._empty(envelope, client, why)

    def _frame(
        self, data: zmq.Frame, shape: list[int], dtype: np.dtype[Any], client: ClientStats
    ) -> tuple[Any, int, int]:
        """The tensor as an array the model takes, and the frame's width and height; (None, 0,
        0) after logging why when it does not fit (and is not resized)."""
        info = self.port.info()
        spec = info.inputs[0] if info is not None and len(info.inputs) == 1 else None
        if spec is None:
            self._mismatch(client, "the model does not have one image input")
            return None, 0, 0
        wanted = [max(int(d), 1) for d in spec.shape]
        buffer = data.buffer
        size = math.prod(shape) * dtype.itemsize
        if size != len(buffer) or not shape:
            self._mismatch(
                client,
                f"the header says {dtype.name} {shape} ({size} bytes) but {len(buffer)} came",
            )
            return None, 0, 0
        image_shape = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
        if len(image_shape) != 3:
            self._mismatch(client, f"a {dtype.name} {shape} tensor is not one NHWC image")
            return None, 0, 0
        height, width = image_shape[0], image_shape[1]
        array = np.frombuffer(buffer, dtype=dtype)
        if dtype.name == spec.dtype and image_shape == wanted[-3:]:
            return array.reshape(wanted), width, height
        resizable = dtype == np.uint8 and image_shape[2] == 3 and spec.dtype == "uint8"
        if self.cfg.on_mismatch == "resize" and resizable:
            return array.reshape(image_shape), width, height
        self._mismatch(
            client,
            f"Frigate sends {dtype.name} {shape} but model {self.port.model} takes {spec.dtype} "
            f"{wanted}; set Frigate's model width/height to {wanted[2]}x{wanted[1]} "
            f"(input_tensor nhwc, input_pixel_format rgb, input_dtype int)"
            + ("" if not resizable else ', or frigate.on_mismatch = "resize" in edgetpud'),
        )
        return None, 0, 0

    def _on_control(self, envelope: tuple[Any, ...], data: bytes, client: ClientStats) -> None:
        """A one-frame message: newer Frigate's model handshake."""
        try:
            header = json.loads(data)
        except ValueError:
            header = None
        if not isinstance(header, dict):
            with self._lock:
                client.requests += 1
                self.totals["requests"] += 1
            self._empty(envelope, client, "a one-frame message that is not a model handshake")
            return
        name = str(header.get("model_name", ""))
        if header.get("model_request"):
            # Always "loaded": edgetpud serves its own configured model, and a Frigate told
            # otherwise would send its model file, then never detect until restarted.
            reply = {"model_available": True, "model_loaded": True}
            with self._lock:
                client.detector_model = name
            log.info(
                "Frigate client %s (detector model %s) served by model %s",
                client.client,
                name or "?",
                self.port.model,
            )
        elif header.get("model_data"):
            reply = {"model_saved": False, "model_loaded": False}
            self._warn(
                client,
                "upload",
                f"Frigate client {client.client} tried to send its model file {name}; edgetpud "
                f"only serves its configured model {self.port.model}",
            )
        else:
            self._empty(envelope, client, f"unknown one-frame message {sorted(header)}")
            return
        self._send_now(envelope, json.dumps(reply).encode())

    def _send_now(self, envelope: tuple[Any, ...], payload: bytes) -> None:
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(zmq.Again):
                sock.send_multipart([*envelope, payload], zmq.NOBLOCK, copy=False)

    def _empty(
        self, envelope: tuple[Any, ...], client: ClientStats, why: str, *, counted: bool = False
    ) -> None:
        """Answer no detections at once (from the endpoint's thread)."""
        with self._lock:
            client.empty += 1
            self.totals["empty"] += 1
            if why:
                client.last_empty = why
        if why and not counted:
            self._warn(client, why[:40], f"Frigate client {client.client}: no detections: {why}")
        self._send_now(envelope, EMPTY_REPLY)

    def _mismatch(self, client: ClientStats, why: str) -> None:
        with self._lock:
            client.mismatched += 1
            client.last_empty = why
            self.totals["mismatched"] += 1
        self._warn(client, "mismatch", f"Frigate client {client.client}: no detections: {why}")

    def _on_result(self, result: Result) -> None:
        """A worker finished (or dropped) a Frigate request: from the worker's thread."""
        request = result.request
        pending: _Pending = request.meta["frigate"]
        client = pending.client
        if result.expired or time.monotonic() > request.deadline:
            with self._lock:
                client.expired += 1
                self.totals["expired"] += 1
            return
        if result.error:
            with self._lock:
                client.empty += 1
                client.last_empty = result.error
                self.totals["empty"] += 1
            self._reply_later(pending.envelope, EMPTY_REPLY)
            return
        payload = rows(result.output, pending.width, pending.height, request.meta).tobytes()
        self._served_at = time.monotonic()
        with self._lock:
            client.answered += 1
            self.totals["answered"] += 1
        timing = result.timing
        self._reply_later(
            pending.envelope, payload, request.received_mono, timing.queue_ms if timing else 0.0
        )

    # ---- clients, logs, events --------------------------------------------------------

    def _client(self, routing: zmq.Frame) -> ClientStats:
        rid = routing.bytes
        client = self._peers.get(rid)
        if client is not None:
            return client
        peer = _peer(routing)
        with self._lock:
            client = self._clients.get(peer)
            new = client is None
            if client is None:
                client = ClientStats(peer, first_seen=time.time())
                self._clients[peer] = client
                while len(self._clients) > MAX_CLIENTS:
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(peer)
            client.connections += 1
            self._peers[rid] = client
            while len(self._peers) > MAX_CLIENTS * 4:
                self._peers.popitem(last=False)
        if new:
            self._event("frigate_client", {"client": peer, "endpoint": self.cfg.endpoint})
        return client

    def _set_unavailable(self, why: str) -> None:
        before, self._unavailable = self._unavailable, why
        if why and not before:
            log.warning(
                "Frigate endpoint: answering no detections at once: %s; Frigate shows no "
                "objects until the model runs again",
                why,
            )
            self._event("frigate_unavailable", {"model": self.port.model, "reason": why})
        elif before and not why:
            log.info("Frigate endpoint: model %s serves Frigate again", self.port.model)
            self._event("frigate_available", {"model": self.port.model})

    def _warn(self, client: ClientStats, key: str, message: str) -> None:
        now = time.monotonic()
        mark = (client.client, key)
        if now - self._warned.get(mark, -WARN_EVERY_S) >= WARN_EVERY_S:
            if len(self._warned) > MAX_CLIENTS * 8:
                self._warned.clear()
            self._warned[mark] = now
            log.warning("%s (said at most once a minute)", message)

    def _event(self, kind: str, fields: Mapping[str, Any]) -> None:
        if self._on_event is None:
            return
        now = time.monotonic()
        if kind == "frigate_client" and now - self._last_event < EVENT_GAP_S:
            self._events_held += 1
            return
        if kind == "frigate_client":
            self._last_event = now
            fields = {**fields, "more_clients_not_reported": self._events_held}
            self._events_held = 0
        try:
            self._on_event(kind, fields)
        except Exception:
            log.exception("Frigate endpoint: the event handler failed on %s", kind)

    # ---- health -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The health view: state, settings, totals and the clients (most recent first)."""
        with self._lock:
            clients = [asdict(c) for c in reversed(self._clients.values())]
            totals = {k: self.totals[k] for k in (*OUTCOMES, "requests", "mismatched", "malformed")}
        by_client = {}
        for c in clients:
            c["first_seen"] = round(c["first_seen"], 3)
            c["last_seen"] = round(c["last_seen"], 3)
            by_client[c.pop("client")] = c
        return {
            "state": self.state,
            "error": self.error,
            "endpoint": self.cfg.endpoint,
            "model": self.port.model,
            "request_timeout_ms": round(self.cfg.request_timeout * 1000, 3),
            "unavailable": self._unavailable,
            **totals,
            # p50 over the last LATENCY_WINDOW answered requests, ms: from arrival until a
            # worker took it; from the result until the reply left; arrival to reply
            "queue_p50_ms": _p50(self._queue_ms),
            "reply_p50_ms": _p50(self._reply_ms),
            "in_daemon_p50_ms": _p50(self._total_ms),
            "clients": by_client,
        }


def _p50(values: collections.deque[float]) -> float:
    ordered = sorted(values)  # a copy first: other threads append meanwhile
    return round(ordered[len(ordered) // 2], 3) if ordered else 0.0


def _peer(routing: zmq.Frame) -> str:
    """Who is behind a connection: "pid N (uid U)" over ipc, the address over tcp."""
    try:
        address = str(routing.get("Peer-Address"))
    except (zmq.ZMQError, UnicodeDecodeError):
        address = ""
    parts = address.rsplit(":", 3)
    if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):  # ipc: host:uid:gid:pid
        return f"pid {parts[3]} (uid {parts[1]})"
    return address or f"connection {routing.bytes.hex()}"


def rows(detections: Any, width: int, height: int, meta: Mapping[str, Any]) -> Any:
    """The `detect` postprocessor's output as Frigate's float32 [20, 6] rows.

    Boxes come in model-input pixels, or in the frame's pixels when the frame was
    resized to fit (`meta["image_size"]`); either way they are divided by the size of
    the frame Frigate sent, which is what its own edgetpu detector returns. Best first,
    at most 20, unused rows zero.
    """
    out = np.zeros((ROWS, COLUMNS), np.float32)
    size = meta.get("image_size")
    w, h = (
        (size[0], size[1])
        if isinstance(size, (list, tuple)) and len(size) == 2
        else (width, height)
    )
    for i, found in enumerate(detections[:ROWS] if isinstance(detections, list) else ()):
        box = found["box"]
        out[i] = (
            found["id"],
            found["score"],
            box["ymin"] / h,
            box["xmin"] / w,
            box["ymax"] / h,
            box["xmax"] / w,
        )
    return out


# ---- inside the daemon ------------------------------------------------------------------


class DaemonPort(ModelPort):
    """The port the daemon gives the endpoint: admission through the supervisor's intake
    (`submit`, None when queued), the model's state from the latest snapshot, and the
    model's input from its file."""

    def __init__(
        self,
        model: str,
        info: Any,
        view: Callable[[], Snapshot | None],
        submit: Callable[[Request], str | None],
    ) -> None:
        super().__init__(model, lambda: None)
        self._info = info
        self._view = view
        self._submit = submit

    def info(self) -> Any:
        return self._info

    def unavailable(self) -> str:
        snap = self._view()
        if snap is None:
            return "edgetpud is starting"
        m = snap.models.get(self.model)
        if m is None:
            return f"model {self.model} is not configured"
        if m.state is ModelState.RUNNING:
            return ""
        if m.state is ModelState.DISABLED:
            return f"model {self.model} is disabled: {m.reason}"
        if m.state is ModelState.STARTING:
            return f"model {self.model} is starting on {', '.join(m.devices)}"
        return (
            f"model {self.model} has no device to run on ({m.reason.removeprefix('waiting: ')}); "
            "`edgetpud status` says more"
        )

    def submit(self, request: Request) -> str:
        return self._submit(request) or ""


class FrigateComponent:
    """The endpoint as a daemon component (edgetpud/daemon/ports.py `Component`): started
    after the models, restarted when a reload changes `[frigate]` or its model's file, its
    snapshot the health section "frigate", its events published through the supervisor."""

    name = "frigate"

    def __init__(self, cfg: Config, ctx: ComponentContext) -> None:
        self._cfg = cfg
        self._ctx = ctx
        self._endpoint: FrigateEndpoint | None = None
        self._key: tuple[Any, ...] = ()

    def _wanted(self, cfg: Config) -> tuple[Any, ...]:
        f = cfg.frigate
        if not f.endpoint:
            return ()
        model = cfg.models.get(f.model)
        return (f, model.model if model is not None else None)

    def start(self) -> None:
        key = self._wanted(self._cfg)
        self._key = key
        if not key:
            return
        f = self._cfg.frigate
        model = self._cfg.models.get(f.model)
        try:
            info = modelfile.inspect_model(model.model) if model is not None else None
        except EdgetpudError as exc:
            log.error("Frigate endpoint: model %s cannot be read: %s", f.model, exc)
            info = None
        port = DaemonPort(f.model, info, self._ctx.view.latest, self._ctx.submit)
        endpoint = FrigateEndpoint(f, port, on_event=self._post)
        self._endpoint = endpoint
        try:
            endpoint.start()
        except FrigateError as exc:
            log.error("Frigate endpoint off: %s", exc)
            self._post("frigate_failed", {"endpoint": f.endpoint, "error": str(exc)})

    def _post(self, kind: str, fields: Mapping[str, Any]) -> None:
        self._ctx.post(Publish(kind, dict(fields)))

    def apply_config(self, cfg: Config) -> None:
        self._cfg = cfg
        if self._wanted(cfg) == self._key:
            return
        self.stop(time.monotonic() + 2.0)
        self.start()

    def health(self) -> Mapping[str, Any] | None:
        return self._endpoint.snapshot() if self._endpoint is not None else None

    def stop(self, deadline: float) -> None:
        if self._endpoint is not None:
            self._endpoint.close(max(0.1, deadline - time.monotonic()))
            self._endpoint = None
