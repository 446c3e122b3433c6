"""`FrigateEndpoint`: Frigate's requests in, through a `ModelPort` to the model's workers,
their detections back out; what it promises Frigate is in edgetpud/frigate/__init__.py.

It reads each message with `protocol`, answers at once what the model cannot serve,
queues the rest with itself as the request's `reply`, counts everything in a `Ledger`
and says what went wrong through `Notices`. The socket and its thread are the
`Router`'s; `_on_message` and everything it calls run on that thread, `_on_result` on
the worker's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from edgetpud.config import FrigateConfig
from edgetpud.frigate import protocol
from edgetpud.frigate.clients import ClientStats, Ledger
from edgetpud.frigate.notices import EventSink, Notices
from edgetpud.frigate.port import ModelPort
from edgetpud.frigate.protocol import EMPTY_REPLY, Frame, Mismatch
from edgetpud.frigate.router import POLL_MS, FrigateError, Router, peer
from edgetpud.messages import Request, Result

log = logging.getLogger(__name__)

# A model that answered a request this recently is taken to be serving whatever the port
# says: the daemon's port reads the latest state snapshot, which can lag a worker that
# has just opened by up to its refresh interval (0.5 s); longer would keep taking
# requests for a model that has just stopped, which then time out in Frigate.
RECENTLY_SERVED_S = 0.5
MAX_PLANS = 64  # request headers whose fit is remembered (Frigate sends one per detector)


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
        context: Any = None,  # a zmq.Context; the process's shared one by default
        poll_ms: int = POLL_MS,
    ) -> None:
        self.cfg = cfg
        self.port = port
        self.ledger = Ledger()
        self.notices = Notices(port.model, on_event)
        self.router = Router(
            cfg, self._on_message, self.ledger.sent, context=context, poll_ms=poll_ms
        )
        self._served_at = -RECENTLY_SERVED_S  # time.monotonic() of the last detections sent
        # (header bytes, model input) -> how such frames fit; the endpoint's thread only
        self._plans: dict[tuple[bytes, Any], protocol.FramePlan] = {}
        self.state = "stopped"  # "listening", "failed", "stopped"
        self.error = ""

    def start(self) -> None:
        """Bind and start serving; FrigateError (logged by the caller) if it cannot bind."""
        try:
            self.router.start()
        except FrigateError as exc:
            self.state, self.error = "failed", str(exc)
            raise
        self.state, self.error = "listening", ""
        log.info(
            "Frigate endpoint listening on %s for model %s (request timeout %g ms)",
            self.cfg.endpoint,
            self.port.model,
            self.cfg.request_timeout * 1000,
        )

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread, close the socket, remove the ipc socket file. Idempotent."""
        self.router.close(timeout)
        if self.state == "listening":
            self.state = "stopped"

    # ---- requests (the endpoint's thread) ---------------------------------------------

    def _on_message(self, frames: list[Any]) -> None:
        received = time.monotonic()
        parts = protocol.split_envelope(frames)
        if parts is None:
            self.ledger.malformed()
            return
        envelope, body = parts
        client = self._client(frames[0])
        if len(body) == 1:
            self._on_control(envelope, body[0].bytes, client)
            return
        self.ledger.request(client)
        if len(body) != 2:
            self._empty(
                envelope, client, f"{len(body)} frames; Frigate sends a header and a tensor"
            )
            return
        try:
            plan = self._plan(body[0].bytes)
        except (ValueError, KeyError, TypeError) as exc:
            self._empty(envelope, client, f"unreadable header ({exc})")
            return
        why = self.port.unavailable()
        if why and received - self._served_at < RECENTLY_SERVED_S:
            why = ""  # the port's view lags: the model answered moments ago
        if why:
            self.notices.set_unavailable(why)
            self._empty(envelope, client, why)
            return
        if self.notices.unavailable:
            self.notices.set_unavailable("")
        array, width, height = self._frame(body[1], plan, client)
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

    def _plan(self, header: bytes) -> protocol.FramePlan:
        """How frames with this header fit the model (ValueError, KeyError or TypeError
        when it cannot be read), remembered per header and model input: Frigate sends
        the same header with every frame."""
        info = self.port.info()
        spec = info.inputs[0] if info is not None and len(info.inputs) == 1 else None
        key = (header, spec)
        plan = self._plans.get(key)
        if plan is None:
            shape, dtype = protocol.read_header(header)
            resize = self.cfg.on_mismatch == "resize"
            plan = protocol.plan_frame(shape, dtype, spec, self.port.model, resize=resize)
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _frame(
        self, data: Frame, plan: protocol.FramePlan, client: ClientStats
    ) -> tuple[Any, int, int]:
        """The tensor as an array the model takes, and the frame's width and height; (None, 0,
        0) after logging why when it does not fit (and is not resized)."""
        try:
            return plan.apply(data.buffer)
        except Mismatch as exc:
            why = str(exc)
            self.ledger.mismatch(client, why)
            self.notices.warn(
                client.client, "mismatch", f"Frigate client {client.client}: no detections: {why}"
            )
            return None, 0, 0

    def _on_control(self, envelope: tuple[Any, ...], data: bytes, client: ClientStats) -> None:
        """A one-frame message: newer Frigate's model handshake."""
        control = protocol.read_control(data)
        if control.kind == "invalid":
            self.ledger.request(client, seen=False)
            self._empty(envelope, client, "a one-frame message that is not a model handshake")
            return
        name = control.model_name
        if control.kind == "model_request":
            self.ledger.detector_model(client, name)
            log.info(
                "Frigate client %s (detector model %s) served by model %s",
                client.client,
                name or "?",
                self.port.model,
            )
        elif control.kind == "model_data":
            self.notices.warn(
                client.client,
                "upload",
                f"Frigate client {client.client} tried to send its model file {name}; edgetpud "
                f"only serves its configured model {self.port.model}",
            )
        else:
            self._empty(envelope, client, f"unknown one-frame message {list(control.keys)}")
            return
        self.router.send(envelope, control.reply)

    def _empty(
        self, envelope: tuple[Any, ...], client: ClientStats, why: str, *, counted: bool = False
    ) -> None:
        """Answer no detections at once (from the endpoint's thread)."""
        self.ledger.empty(client, why)
        if why and not counted:
            self.notices.warn(
                client.client, why[:40], f"Frigate client {client.client}: no detections: {why}"
            )
        self.router.send(envelope, EMPTY_REPLY)

    def _client(self, routing: Any) -> ClientStats:
        client, new = self.ledger.client(routing.bytes, lambda: peer(routing))
        if new:
            self.notices.event(
                "frigate_client", {"client": client.client, "endpoint": self.cfg.endpoint}
            )
        return client

    # ---- results (a worker's thread) --------------------------------------------------

    def _on_result(self, result: Result) -> None:
        """A worker finished (or dropped) a Frigate request."""
        request = result.request
        pending: _Pending = request.meta["frigate"]
        client = pending.client
        if result.expired or time.monotonic() > request.deadline:
            self.ledger.expired(client)
            return
        if result.error:
            self.ledger.empty(client, result.error)
            self.router.send(pending.envelope, EMPTY_REPLY)
            return
        payload = protocol.rows(result.output, pending.width, pending.height, request.meta)
        self._served_at = time.monotonic()
        timing = result.timing
        self.ledger.answered(client, timing.queue_ms if timing else 0.0)
        self.router.send(pending.envelope, payload.tobytes(), request.received_mono)

    # ---- health -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The health view: state, settings, totals and the clients (most recent first)."""
        return {
            "state": self.state,
            "error": self.error,
            "endpoint": self.cfg.endpoint,
            "model": self.port.model,
            "request_timeout_ms": round(self.cfg.request_timeout * 1000, 3),
            "unavailable": self.notices.unavailable,
            **self.ledger.snapshot(),
        }
