"""Table tests for device trust (edgetpud/policy/trust.py): quarantine, backoff, hangs."""

from __future__ import annotations

import pytest

from edgetpud.policy.trust import (
    OpenFailure,
    Trust,
    after_invoke_errors,
    after_open_failed,
    backoff_of,
    hang,
    on_device_change,
    planning_devices,
    quarantine,
    quarantines_over,
    release,
)
from tests.support.placement import dev

USB = "usb:2-1"


# (quarantines before, expected backoff with a 10 s base)
BACKOFF = [(0, 10.0), (1, 20.0), (2, 40.0), (5, 320.0), (10, 10240.0), (11, 10240.0), (40, 10240.0)]


@pytest.mark.parametrize(("before", "seconds"), BACKOFF)
def test_backoff_doubles_up_to_two_to_the_tenth(before: int, seconds: float) -> None:
    t = quarantine(Trust(quarantines=before), 100.0, 10.0, "3 consecutive inference errors")
    assert t.quarantines == before + 1
    assert backoff_of(t, 100.0) == seconds
    assert t.reason == f"quarantined for {seconds:.0f} s: 3 consecutive inference errors"


def test_a_quarantine_blocks_until_it_runs_out_then_release_keeps_the_count() -> None:
    t = quarantine(None, 100.0, 10.0, "x")
    assert t.blocked(109.9) and not t.blocked(110.0)
    assert quarantines_over({USB: t}, 109.9) == []
    assert quarantines_over({USB: t}, 110.0) == [USB]
    freed = release(t)
    assert not freed.blocked(110.0) and freed.reason == "" and freed.quarantines == 1


def test_a_hung_device_stays_blocked_and_its_quarantine_never_ends() -> None:
    t = hang(quarantine(None, 100.0, 10.0, "x"), "an inference ran longer than stall_timeout")
    assert t.blocked(1e9)
    assert quarantines_over({USB: t}, 1e9) == []
    assert t.reason == "hung: an inference ran longer than stall_timeout"


@pytest.mark.parametrize(
    ("action", "forgets"), [("added", True), ("removed", True), ("changed", False)]
)
def test_a_replug_or_removal_forgets_what_was_learned(action: str, forgets: bool) -> None:
    assert on_device_change(action) is forgets


# (case, trust, device, consecutive errors, limit 3, now 100 → quarantine?)
INVOKE: list[tuple[str, Trust | None, str, int, bool]] = [
    ("below the limit", None, USB, 2, False),
    ("at the limit", None, USB, 3, True),
    ("the CPU is never quarantined", None, "cpu", 50, False),
    ("already quarantined: not again", Trust(quarantined_until=150.0, quarantines=1), USB, 9, False),
    ("quarantine over: again", Trust(quarantined_until=50.0, quarantines=1), USB, 3, True),
    ("hung: not quarantined on top", Trust(hung=True), USB, 9, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "t", "device", "errors", "expected"), INVOKE, ids=[c[0] for c in INVOKE]
)
def test_after_invoke_errors(
    case: str, t: Trust | None, device: str, errors: int, expected: bool
) -> None:
    assert after_invoke_errors(t, device, errors, 3, 100.0) is expected


OPEN: list[tuple[str, str, bool, OpenFailure]] = [
    ("the CPU failing disables the model", "cpu", False, OpenFailure(True, False, False)),
    ("a device refusing: quarantine and learn its port", USB, True, OpenFailure(False, True, True)),
    ("a runtime or model problem: quarantine, port not blamed", USB, False, OpenFailure(False, True, False)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "target", "refused", "expected"), OPEN, ids=[c[0] for c in OPEN])
def test_after_open_failed(case: str, target: str, refused: bool, expected: OpenFailure) -> None:
    assert after_open_failed(target, refused) == expected


def test_placement_sees_a_blocked_device_rejected_with_the_reason() -> None:
    ok, bad = dev(USB), dev("usb:3-1", reasons=("USB 2 port",), verdict="degraded")
    t = quarantine(None, 100.0, 10.0, "could not open an Edge TPU context")
    seen = {d.identity: d for d in planning_devices([ok, bad], {"usb:3-1": t}, 105.0)}
    assert seen[USB] == ok
    assert seen["usb:3-1"].verdict == "rejected"
    assert seen["usb:3-1"].reasons == ("USB 2 port", t.reason)
    later = {d.identity: d for d in planning_devices([bad], {"usb:3-1": t}, 110.0)}
    assert later["usb:3-1"] == bad
