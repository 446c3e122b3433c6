"""Fixtures shared by the integration tests that drive the fake libedgetpu."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fakelib import Accelerators, FakeLib, accelerators


@pytest.fixture
def bed() -> Iterator[Accelerators]:
    """A minimal umockdev testbed of USB accelerators and PCIe modules."""
    with accelerators() as testbed:
        yield testbed


@pytest.fixture
def lib(fake_lib: Path) -> FakeLib:
    """The fake library's test hooks, with their counters reset."""
    hooks = FakeLib(fake_lib)
    hooks.reset()
    return hooks
