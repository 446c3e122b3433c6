"""Kernel thread names: what `top -H` shows for each of the daemon's threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgetpud import threadnames


@pytest.mark.parametrize(
    ("python_name", "kernel_name"),
    [
        ("worker:birds@usb:2-1", "birds@usb:2-1"),
        ("worker:birds@usb:2-1/2", "birds@usb:2-1/2"),
        ("worker:alpha@pci:0000:03:00.0/3", "alpha@pci:000/3"),  # the lane number survives
        ("worker:colours@cpu", "colours@cpu"),
        ("paho-mqtt-client-edgetpud-box1", "mqtt:paho"),
        ("mqtt:sender", "mqtt:sender"),
        ("source:synthetic:a-very-long-model-name", "source:syntheti"),
        ("worker:vögel@usb:2-1/2", "vögel@usb:2-/2"),  # 15 bytes, not 15 characters
        ("worker:aaaaaaaaaaaaö@usb:2-1/2", "aaaaaaaaaaaa/2"),  # never half a character
    ],
)
def test_kernel_names_keep_what_tells_threads_apart(python_name: str, kernel_name: str) -> None:
    name = threadnames.os_name(python_name)
    assert name == kernel_name
    assert len(name.encode()) <= 15


def test_threads_started_after_install_carry_their_name() -> None:
    threadnames.install()
    try:
        seen: list[str] = []

        def report() -> None:
            tid = threading.get_native_id()
            seen.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())

        t = threading.Thread(target=report, name="worker:birds@usb:2-1/2")
        t.start()
        t.join()
        assert seen == ["birds@usb:2-1/2"]
    finally:
        threading.setprofile(None)
