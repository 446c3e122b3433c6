"""The device gate's rule, step by step with a hand-moved clock (edgetpud/scheduler.py)."""

from __future__ import annotations

import threading

from edgetpud.scheduler import DeviceGate, GatedSession, key_for
from tests.support.polling import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _enter_later(gate: DeviceGate, key: str, budget: float) -> threading.Event:
    """Acquire in a thread; the event is set once it got the device."""
    entered = threading.Event()

    def go() -> None:
        gate.acquire(key, budget)
        entered.set()

    threading.Thread(target=go, daemon=True).start()
    return entered


def test_a_run_keeps_its_key_until_the_waiting_key_has_waited_its_budget() -> None:
    clock = Clock()
    gate = DeviceGate("usb:2-1", clock)
    assert gate.acquire("a", 0.05)
    b = _enter_later(gate, "b", 0.05)
    wait_for(lambda: gate.stats().waiting == 1, what="b waiting")
    gate.release()
    # "a" comes back before "b" is due: it goes in again, no reload
    clock.now += 0.03
    assert gate.acquire("a", 0.05)
    assert not b.is_set()
    gate.release()
    clock.now += 0.03  # "b" has now waited 60 ms of its 50 ms budget
    a_again = _enter_later(gate, "a", 0.05)
    wait_for(b.is_set, what="b to get the device once it is due")
    assert not a_again.is_set()  # while b runs and a waits less than its budget
    assert gate.stats().runs == 2
    gate.release()
    clock.now += 0.06
    wait_for(a_again.is_set, what="a to get it back once due")
    assert gate.stats().runs == 3


def test_another_key_goes_in_at_once_when_the_current_one_has_nothing_waiting() -> None:
    gate = DeviceGate("usb:2-1", Clock())
    assert gate.acquire("a", 1.0)
    b = _enter_later(gate, "b", 1.0)
    wait_for(lambda: gate.stats().waiting == 1, what="b waiting")
    assert not b.is_set()  # not while "a" is in flight
    gate.release()
    wait_for(b.is_set, what="b to go in when the device is idle")


def test_a_waiting_lane_gives_up_when_its_worker_stops() -> None:
    gate = DeviceGate("usb:2-1", Clock())
    assert gate.acquire("a", 1.0)
    stop = threading.Event()
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(gate.acquire("b", 1.0, stop)))
    t.start()
    wait_for(lambda: gate.stats().waiting == 1, what="b waiting")
    stop.set()
    t.join(10)
    assert result == [False] and gate.stats().waiting == 0
    gate.release()
    assert gate.acquire("a", 1.0)  # nothing left behind


def test_models_compiled_together_share_a_key() -> None:
    class Info:
        def __init__(self, tokens: tuple[int, ...]) -> None:
            self.caching_tokens = tokens

    assert key_for(Info((7,)), "birds") == key_for(Info((7,)), "garden")
    assert key_for(Info(()), "birds") != key_for(Info(()), "garden")


def test_a_gated_session_invokes_in_its_turn_on_its_device() -> None:
    class Session:
        info = object()
        device = "usb:2-1"
        closed = False

        def invoke(self, inputs: list[int]) -> list[int]:
            return [x + 1 for x in inputs]

        def close(self) -> None:
            self.closed = True

    gate = DeviceGate("usb:2-1", Clock())
    inner = Session()
    gated = GatedSession(inner, gate, ("token", 7), 0.05)
    assert gated.invoke([1, 2]) == [2, 3]
    assert gate.stats().invokes == 1 and gate.stats().current == ("token", 7)
    gated.close()
    assert inner.closed
