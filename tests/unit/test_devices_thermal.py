"""Throttle levels and the drain hysteresis of PCIe modules, as plain values."""

from __future__ import annotations

import pytest

from edgetpud.config import DevicesConfig
from edgetpud.devices.facts import ApexFacts
from edgetpud.devices.thermal import crossing, draining_next, is_dead, reading_only, throttle_level
from edgetpud.devices.verdict import judge

TRIPS = (85.0, 90.0, 95.0)


@pytest.mark.parametrize(
    ("temp", "level"),
    [(40.0, 0), (84.9, 0), (85.0, 1), (89.9, 1), (90.0, 2), (95.0, 3), (120.0, 3)],
)
def test_throttle_level_counts_trip_points_reached(temp: float, level: int) -> None:
    assert throttle_level(temp, TRIPS) == level


@pytest.mark.parametrize(
    ("was", "temp", "now"),
    [
        (False, 94.9, False),  # hot but not past the last trip point
        (False, 95.0, True),  # reached it: drain
        (True, 90.0, True),  # cooling, still above the first trip point: stay out
        (True, 85.0, True),
        (True, 84.9, False),  # below the first: back in service
        (True, -88.0, False),  # a dead sensor is a different verdict, not a drain
        (True, None, False),
    ],
)
def test_drain_holds_until_the_module_cools_below_its_first_trip_point(
    was: bool, temp: float | None, now: bool
) -> None:
    assert draining_next(was, temp, TRIPS) is now


def test_dead_reading() -> None:
    assert is_dead(-88.0) and not is_dead(-10.0)


def apex(temp_c: float) -> ApexFacts:
    return ApexFacts(
        "apex_0",
        "0000:03:00.0",
        temp_mc=round(temp_c * 1000),
        trip_points_mc=(85000, 90000, 95000),
    )


@pytest.mark.parametrize(
    ("temp", "draining", "verdict", "level"),
    [
        (60.0, False, "ok", 0),
        (91.0, False, "degraded", 2),
        (96.0, False, "rejected", 3),
        (88.0, True, "rejected", 1),
        (88.0, False, "degraded", 1),
        (-88.0, False, "rejected", 0),
    ],
)
def test_verdict_follows_level_and_drain(
    temp: float, draining: bool, verdict: str, level: int
) -> None:
    facts = apex(temp)
    (record,) = judge([facts], DevicesConfig(), draining={facts.identity} if draining else ())
    assert record.thermal is not None
    assert (record.verdict, record.thermal.level) == (verdict, level)
    assert record.reasons or verdict == "ok"


def test_a_new_reading_at_the_same_level_is_no_event_but_a_crossing_is() -> None:
    (a,) = judge([apex(86.0)], DevicesConfig())
    (b,) = judge([apex(88.5)], DevicesConfig())  # still level 1, reasons quote 88.5
    (c,) = judge([apex(90.5)], DevicesConfig())  # level 2
    assert reading_only(a, b) and crossing(a, b) is None
    assert not reading_only(b, c)
    assert crossing(b, c) == {
        "device": "pci:0000:03:00.0",
        "temperature": 90.5,
        "level": 2,
        "from_level": 1,
        "trip_points": [85.0, 90.0, 95.0],
        "state": "throttled",
    }
    (dead,) = judge([apex(-88.0)], DevicesConfig())
    event = crossing(a, dead)
    assert event is not None and event["state"] == "dead"
