"""Bounded reads of the files a config names (models, labels, the config itself)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from edgetpud.pathcheck import NotARegularFile, TooLarge, read_bounded


def test_a_limit_as_large_as_the_platform_allows_still_reads_the_file(tmp_path: Path) -> None:
    """A model's limit is 2**31 - 1, which is sys.maxsize on armhf: asking read() for one
    byte more raised OverflowError there, so no model opened on a 32-bit Pi."""
    f = tmp_path / "model.tflite"
    f.write_bytes(b"x" * 1000)
    assert read_bounded(f, sys.maxsize) == b"x" * 1000
    assert read_bounded(f, 2**31 - 1) == b"x" * 1000


def test_over_the_limit_is_refused_with_the_size(tmp_path: Path) -> None:
    f = tmp_path / "labels.txt"
    f.write_bytes(b"y" * 101)
    with pytest.raises(TooLarge) as err:
        read_bounded(f, 100)
    assert err.value.size == 101
    assert read_bounded(f, 101) == b"y" * 101


def test_an_empty_file_is_empty(tmp_path: Path) -> None:
    f = tmp_path / "empty"
    f.touch()
    assert read_bounded(f, 10) == b""


def test_a_fifo_is_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFile):
        read_bounded(fifo, 10)
