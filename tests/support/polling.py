"""The one polling helper of the tests (and of bench/): wait until a condition holds.

    value = wait_for(lambda: sub.on(topic), 30, "the retained status")

Returns the condition's first truthy value; fails the test with `what` once `timeout`
seconds have passed. Anything a test waits for goes through here, so that every timeout
says what was awaited and for how long.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float = 30.0, what: str = "", interval: float = 0.02
) -> T:
    """Poll predicate() every `interval` seconds until it is truthy and return that value;
    raise AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)
