"""sd_notify through the sdnotify package: what systemd receives, and never a crash.

A datagram socket of the test's own stands in for systemd's NOTIFY_SOCKET (the
e2e tests check the same messages from the real daemon).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetpud.notify import Notifier


def listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    path = tmp_path / "notify.sock"
    sock = listener(path)
    yield path, sock
    sock.close()


def said(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_every_message_the_daemon_sends(systemd: tuple[Path, socket.socket]) -> None:
    path, sock = systemd
    n = Notifier(str(path))
    n.ready("2 models on 1 TPU; mqtt connected")
    assert said(sock) == "READY=1\nSTATUS=2 models on 1 TPU; mqtt connected"
    n.reloading()
    reloading, usec = said(sock).split("\n")
    assert reloading == "RELOADING=1" and usec.startswith("MONOTONIC_USEC=")
    assert int(usec.split("=")[1]) > 0
    n.status("1 waiting; mqtt disconnected")
    assert said(sock) == "STATUS=1 waiting; mqtt disconnected"
    n.watchdog()
    assert said(sock) == "WATCHDOG=1"
    n.stopping(within=45.0)
    assert said(sock) == "STOPPING=1\nEXTEND_TIMEOUT_USEC=45000000"
    n.close()


def test_a_status_in_utf8_reaches_systemd_as_utf8(systemd: tuple[Path, socket.socket]) -> None:
    path, sock = systemd
    Notifier(str(path)).status("model vögel waiting")
    assert said(sock) == "STATUS=model vögel waiting"


def test_systemd_rebinding_its_socket_is_followed(
    systemd: tuple[Path, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    """systemd re-executing itself binds the socket anew: the next message still arrives."""
    path, sock = systemd
    n = Notifier(str(path))
    n.ready()
    assert said(sock) == "READY=1"
    sock.close()
    path.unlink()
    fresh = listener(path)
    try:
        with caplog.at_level(logging.DEBUG, logger="edgetpud.notify"):
            n.watchdog()
        assert said(fresh) == "WATCHDOG=1"
        assert "sd_notify failed" in caplog.text  # the error reached our handling
    finally:
        fresh.close()


def test_no_systemd_listening_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier(str(tmp_path / "absent.sock"))
    with caplog.at_level(logging.DEBUG, logger="edgetpud.notify"):
        n.ready()
        n.watchdog()
    assert "cannot reach" in caplog.text


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.ready()  # nothing to reach, nothing raised


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [("3000000", "", 3.0), ("3000000", "self", 3.0), ("3000000", "1", 0.0), ("", "", 0.0)],
)
def test_the_watchdog_interval_is_ours_only_for_our_pid(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str, interval: float
) -> None:
    import os

    monkeypatch.setenv("WATCHDOG_USEC", usec)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert Notifier("").watchdog_interval == interval
