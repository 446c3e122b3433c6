"""Learned bad ports persist across restarts and never take the daemon down."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edgetpud.devices.learned import FILENAME, LearnedPorts


def test_learned_ports_persist_and_forget(tmp_path: Path) -> None:
    store = LearnedPorts(tmp_path)
    assert store.learn("usb:2-3.2.2", "could not open an Edge TPU context")
    assert not store.learn("usb:2-3.2.2", "could not open an Edge TPU context")
    data = json.loads((tmp_path / FILENAME).read_text())
    assert data["schema"] == "edgetpud.learned-ports/1"
    assert data["ports"]["usb:2-3.2.2"]["reason"] == "could not open an Edge TPU context"
    assert LearnedPorts(tmp_path).reasons() == {"usb:2-3.2.2": "could not open an Edge TPU context"}
    assert store.forget("usb:2-3.2.2")
    assert not store.forget("usb:2-3.2.2")
    assert LearnedPorts(tmp_path).reasons() == {}


def test_corrupt_file_logs_one_line_and_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILENAME).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        store = LearnedPorts(tmp_path)
    assert store.reasons() == {}
    assert len(caplog.records) == 1
    assert "corrupt" in caplog.records[0].getMessage()
    store.learn("usb:2-1", "x")
    assert LearnedPorts(tmp_path).reasons() == {"usb:2-1": "x"}


def test_unwritable_state_dir_keeps_ports_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state folder should be")
    store = LearnedPorts(blocker / "state")
    with caplog.at_level(logging.WARNING):
        store.learn("usb:2-1", "first")
        store.learn("usb:2-2", "second")
    assert store.reasons() == {"usb:2-1": "first", "usb:2-2": "second"}
    assert len(caplog.records) == 1
    assert "keeping them in memory" in caplog.records[0].getMessage()
