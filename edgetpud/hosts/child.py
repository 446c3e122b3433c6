"""The device host process: `python -m edgetpud.hosts --control-fd N --device D --parent P`.

It owns every TFLite interpreter (and so the Edge TPU delegate) of one device: the
daemon opens one session per lane over the control socket, passing the lane's own
socket and tensor slot; a thread per session then waits on its socket, invokes when
told to, and answers. Whatever libedgetpu does to this process (abort, segfault, a
wedge that never returns) costs the daemon this process only.

It dies with the daemon: PR_SET_PDEATHSIG (SIGKILL) covers a daemon killed outright,
and it exits by itself when the control socket reads end-of-file. It ignores SIGINT
and SIGTERM: the daemon decides when it ends (systemd's stop signal goes to the whole
unit; the daemon first drains, then closes its hosts).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from edgetpud.hosts import wire
from edgetpud.hosts.slots import Layout, Slot

log = logging.getLogger("edgetpud.host")

PR_SET_PDEATHSIG = 1
CLOSE_GRACE_S = 2.0


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that started it (in the daemon) ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # the daemon died before prctl took effect
        os._exit(0)


class Lane:
    """One session: an interpreter in this process, its socket and its tensor slot."""

    def __init__(self, body: dict[str, Any], fds: list[int]) -> None:
        self.sid = int(body["sid"])
        self.body = body
        self.sock = socket.socket(fileno=fds[0])
        self.slot = Slot(fds[1], Layout.from_wire(body["layout"]))
        self.thread = threading.Thread(
            target=self.serve, name=f"host-lane:{Path(body['model']).name}/{self.sid}", daemon=True
        )

    def serve(self) -> None:
        from edgetpud import runtime  # the only module that imports the TFLite runtime

        body, sock, slot = self.body, self.sock, self.slot
        try:
            try:
                session = runtime.open_session(
                    Path(body["model"]), str(body["device"]), **dict(body["options"])
                )
            except Exception as exc:
                wire.send(sock, wire.ERROR, wire.exception_to_wire(exc))
                return
            try:
                wire.send(sock, wire.OPENED, {"delegate_device": session.delegate_device})
                self._loop(session, sock, slot)
            finally:
                session.close()
        except OSError:
            pass  # the daemon went away: nothing to answer
        finally:
            slot.close()
            sock.close()

    @staticmethod
    def _loop(session: Any, sock: socket.socket, slot: Slot) -> None:
        # inputs read from the slot, outputs copied into it; this thread alone runs and
        # closes the session (Session.invoker_into)
        invoke = session.invoker_into(slot.inputs, slot.outputs)
        recv, send, go, done = sock.recv, sock.send, wire.INVOKE, wire.DONE
        while recv(16) == go:
            try:
                invoke()
            except Exception as exc:
                wire.send(sock, wire.ERROR, wire.exception_to_wire(exc))
                continue
            send(done)


def serve(control: socket.socket, prefer: str) -> None:
    try:
        from edgetpud import runtime

        name, problem = runtime.runtime_name(prefer), ""
    except Exception as exc:  # reported per open; the host itself stays up
        name, problem = "", str(exc)
    wire.send(control, wire.READY, {"pid": os.getpid(), "runtime": name, "problem": problem})
    lanes: list[Lane] = []
    while True:
        kind, body, fds = wire.recv(control, max_fds=2)
        if not kind:
            break
        if kind == wire.OPEN and len(fds) == 2:
            lane = Lane(body, fds)
            lanes = [x for x in lanes if x.thread.is_alive()]
            lanes.append(lane)
            lane.thread.start()
        else:
            for fd in fds:
                os.close(fd)
            log.error("unexpected message %r from the daemon; ignored", kind)
    for lane in lanes:  # the daemon closed us: let each lane close its interpreter
        lane.thread.join(CLOSE_GRACE_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgetpud.hosts")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(levelname)s %(name)s: %(message)s"
    )
    threading.current_thread().name = f"host:{args.device}"
    control = socket.socket(fileno=args.control_fd)
    try:
        serve(control, args.runtime)
    finally:
        control.close()
    sys.stderr.flush()
    os._exit(0)  # a lane wedged inside the runtime must not keep the process alive
