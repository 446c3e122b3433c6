"""`HostSession`: one lane's interpreter in a device host, seen from the daemon.

It has the shape `edgetpud.workers.Session` asks for (info, device, invoke, close).
`invoke` copies the inputs into the lane's slot, sends one byte, waits for one byte
and returns copies of the outputs from the slot. When the host dies meanwhile it
raises `HostLost`, which tells the worker whether the request was inside the host
when it died (it then counts as an attempt) and why the host died.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetpud.errors import DeviceError, ModelError
from edgetpud.hosts import wire
from edgetpud.hosts.slots import Slot

Array = npt.NDArray[Any]


class HostLost(DeviceError):
    """The device host died (or was killed) under a session: the request goes back."""

    def __init__(self, device: str, pid: int, reason: str, *, sent: bool) -> None:
        self.device = device
        self.pid = pid
        self.reason = reason
        self.sent = sent  # the request was inside the host when it died
        super().__init__(reason)


class HostSession:
    """One interpreter in a device host, driven from one worker lane."""

    def __init__(
        self,
        info: Any,
        device: str,
        sock: socket.socket,
        slot: Slot,
        *,
        pid: int,
        delegate_device: str,
        lost: Callable[[], str],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.info = info
        self.device = device
        self.pid = pid
        self.delegate_device = delegate_device
        self._sock = sock
        self._slot = slot
        self._lost_reason = lost  # waits for the host's exit and says why it died
        self._on_close = on_close
        self._closed = False

    def __repr__(self) -> str:
        return f"<HostSession {self.info.path.name} on {self.device} in host {self.pid}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def invoke(self, inputs: Sequence[Array]) -> list[Array]:
        """Run one inference in the host; copies of the outputs.

        Raises ModelError when the inputs do not fit the model, InvokeError (rebuilt from
        the host) when the runtime fails, HostLost when the host is gone.
        """
        if self._closed:
            raise ModelError(f"{self!r} is closed: open a new session to run the model")
        views = self._slot.inputs
        if len(inputs) != len(views):
            raise ModelError(
                f"{self.info.path.name} takes {len(views)} input(s), got {len(inputs)}"
            )
        for spec, view, array in zip(self.info.inputs, views, inputs):
            if array.shape != view.shape or array.dtype != view.dtype:
                raise ModelError(
                    f"input {spec.name!r} of {self.info.path.name} wants {view.dtype} "
                    f"{list(view.shape)}, got {array.dtype} {list(array.shape)}"
                )
            np.copyto(view, array, casting="no")
        sock = self._sock
        try:
            sock.send(wire.INVOKE)
        except OSError:
            raise self._lost(sent=False) from None
        try:
            reply = sock.recv(wire.MAX_PACKET)
        except OSError:
            reply = b""
        if reply == wire.DONE:
            return [np.array(view) for view in self._slot.outputs]
        if reply[:1] == wire.ERROR:
            _kind, body, _ = wire.decode(reply)
            raise wire.exception_from_wire(body)
        raise self._lost(sent=True)

    def _lost(self, *, sent: bool) -> HostLost:
        return HostLost(self.device, self.pid, self._lost_reason(), sent=sent)

    def close(self) -> None:
        """Tell the host to close the interpreter; release the socket and slot. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.send(wire.CLOSE)
        self._sock.close()
        self._slot.close()
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> HostSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
