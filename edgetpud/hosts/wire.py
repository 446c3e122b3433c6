"""The messages between the daemon and a device host: small, over AF_UNIX SOCK_SEQPACKET.

Each message is one packet: a one-byte kind, then (for some kinds) a JSON body. Tensors
never travel here; they sit in the lane's slot (edgetpud.hosts.slots). SEQPACKET keeps
message boundaries, carries file descriptors (SCM_RIGHTS) and reads b"" once the other
end is gone, which is how either side learns the other died.

Control socket, one per host:
  daemon → host  OPEN  {sid, model, device, options, layout} + fds [session socket, slot]
  host → daemon  READY {pid, runtime}  once the TFLite runtime is imported
Session socket, one per lane:
  daemon → host  INVOKE (inputs are in the slot) | CLOSE
  host → daemon  OPENED {delegate_device} | DONE (outputs are in the slot) | ERROR {exception}
"""

from __future__ import annotations

import array
import contextlib
import importlib
import json
import socket
from typing import Any

OPEN = b"O"
READY = b"R"
INVOKE = b"I"
CLOSE = b"C"
OPENED = b"P"
DONE = b"D"
ERROR = b"E"

MAX_PACKET = 65536


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of SEQPACKET sockets (both close-on-exec)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, kind: bytes, body: Any = None, fds: tuple[int, ...] = ()) -> None:
    data = kind if body is None else kind + json.dumps(body, default=str).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def recv(sock: socket.socket, max_fds: int = 0) -> tuple[bytes, Any, list[int]]:
    """(kind, body or None, fds); kind b"" when the other end has closed or died."""
    if max_fds:
        data, ancdata, _flags, _addr = sock.recvmsg(MAX_PACKET, socket.CMSG_SPACE(max_fds * 4))
        fds: list[int] = []
        for level, type_, payload in ancdata:
            if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
                fds.extend(got)
    else:
        data, fds = sock.recv(MAX_PACKET), []
    kind, body, _ = decode(data)
    return kind, body, fds


def decode(data: bytes) -> tuple[bytes, Any, list[int]]:
    """(kind, body or None, []) of one packet; kind b"" for end-of-file."""
    if not data:
        return b"", None, []
    return data[:1], (json.loads(data[1:]) if len(data) > 1 else None), []


def exception_to_wire(exc: BaseException) -> dict[str, Any]:
    """An exception raised in the host, as the daemon rebuilds it (`exception_from_wire`)."""
    cls = type(exc)
    return {
        "module": cls.__module__,
        "class": cls.__qualname__,
        "message": str(exc),
        "attrs": {k: v for k, v in vars(exc).items() if not k.startswith("_")},
    }


def exception_from_wire(data: dict[str, Any]) -> Exception:
    """The same exception class with the same message and attributes, when it is one of
    edgetpud's; anything else (a bug in the host) comes back as a RuntimeError naming it."""
    module, name, message = str(data["module"]), str(data["class"]), str(data["message"])
    cls: Any = None
    if module == "edgetpud" or module.startswith("edgetpud."):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return RuntimeError(f"{name}: {message}" if message else name)
    exc: Exception = cls.__new__(cls)
    Exception.__init__(exc, message)
    for key, value in dict(data.get("attrs") or {}).items():
        with contextlib.suppress(AttributeError):
            setattr(exc, key, value)
    return exc
