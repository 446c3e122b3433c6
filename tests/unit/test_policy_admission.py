"""Table tests for request admission (edgetpud/policy/admission.py), written as plain data."""

from __future__ import annotations

from typing import Any

import pytest

from edgetpud.policy.admission import Door, Verdict, busy, decide, fleet_step, waiting

NO_DEVICE = "no_device: model a has had no device to run on for 30 s (x); retry …"

# (case, door (None = not configured), request source, expected verdict)
DECIDE: list[tuple[str, Door | None, str, Verdict]] = [
    ("unknown model", None, "mqtt", Verdict('unknown model "a"')),
    (
        "disabled model says why",
        Door(disabled="enabled = false in the config"),
        "mqtt",
        Verdict("model a is disabled: enabled = false in the config"),
    ),
    ("no device for too long", Door(no_device=NO_DEVICE), "mqtt", Verdict(NO_DEVICE)),
    ("disabled wins over no device", Door("broken", NO_DEVICE), "mqtt", Verdict("model a is disabled: broken")),
    ("a plain request waits for no room", Door(), "mqtt", Verdict(queue="put")),
    ("a fleet request is kept over the limit", Door(), "mqtt-fleet", Verdict(queue="over_limit")),
    ("a fleet request for a model without device is refused", Door(no_device=NO_DEVICE), "mqtt-fleet", Verdict(NO_DEVICE)),
    ("a component's request is an ordinary one", Door(), "frigate", Verdict(queue="put")),
]  # fmt: skip


@pytest.mark.parametrize(("case", "door", "source", "expected"), DECIDE, ids=[c[0] for c in DECIDE])
def test_decide(case: str, door: Door | None, source: str, expected: Verdict) -> None:
    assert decide("a", door, source) == expected


def test_busy_names_the_model_its_queue_size_and_when_to_retry() -> None:
    assert busy("a", Door(queue_size=8)) == (
        "busy: the queue of model a is full (8 waiting); retry later"
    )
    assert busy("a", Door(queue_size=8), 120) == (
        "busy: the queue of model a is full (8 waiting); retry in 120 ms"
    )


# (case, keyword arguments of waiting(), expected (since, no_device set, change))
WAIT: list[tuple[str, dict[str, Any], tuple[float, bool, str]]] = [
    ("running: not waiting", {"has_workers": True}, (0.0, False, "")),
    ("runs again after giving up", {"has_workers": True, "no_device": NO_DEVICE}, (0.0, False, "runs_again")),
    ("disabled: not waiting", {"disabled": True}, (0.0, False, "")),
    ("thread source: not waiting", {"mqtt_fed": False}, (0.0, False, "")),
    ("starts waiting now", {"now": 100.0}, (100.0, False, "")),
    ("keeps waiting within the limit", {"since": 80.0, "now": 100.0}, (80.0, False, "")),
    ("gives up at the limit", {"since": 70.0, "now": 100.0}, (70.0, True, "gave_up")),
    ("gave up once, says nothing more", {"since": 70.0, "now": 200.0, "no_device": NO_DEVICE}, (70.0, True, "")),
    ("limit 0 waits for ever", {"since": 1.0, "now": 10_000.0, "limit": 0.0}, (1.0, False, "")),
]  # fmt: skip


@pytest.mark.parametrize(("case", "kw", "expected"), WAIT, ids=[c[0] for c in WAIT])
def test_waiting(case: str, kw: dict[str, Any], expected: tuple[float, bool, str]) -> None:
    args: dict[str, Any] = {
        "has_workers": False,
        "disabled": False,
        "mqtt_fed": True,
        "since": 0.0,
        "no_device": "",
        "now": 100.0,
        "limit": 30.0,
        "why": "waiting: no usable Edge TPU",
    }
    w = waiting("a", **{**args, **kw})
    assert (w.since, bool(w.no_device), w.change) == expected


def test_the_no_device_refusal_says_how_long_why_and_what_to_do() -> None:
    w = waiting(
        "birds",
        has_workers=False,
        disabled=False,
        mqtt_fed=True,
        since=1.0,
        no_device="",
        now=31.0,
        limit=30.0,
        why="waiting: the only Edge TPU is quarantined",
    )
    assert w.no_device == (
        "no_device: model birds has had no device to run on for 30 s (the only Edge TPU "
        "is quarantined); retry when the node's health topic shows it running"
    )


# (case, depth, limit, no_device, paused, expected)
FLEET: list[tuple[str, int, int, bool, bool, str]] = [
    ("room: nothing", 3, 10, False, False, ""),
    ("full: pause", 10, 10, False, False, "pause"),
    ("over the limit: pause", 12, 10, False, False, "pause"),
    ("no device: pause", 0, 10, True, False, "pause"),
    ("paused, still above half: stay", 6, 10, False, True, ""),
    ("paused, down to half: resume", 5, 10, False, True, "resume"),
    ("paused without device: stay", 0, 10, True, True, ""),
    ("queue of one resumes only when empty", 0, 1, False, True, "resume"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "depth", "limit", "nodev", "paused", "expected"), FLEET, ids=[c[0] for c in FLEET]
)
def test_fleet_step(  # noqa: PLR0917 - one parameter per table column
    case: str, depth: int, limit: int, nodev: bool, paused: bool, expected: str
) -> None:
    assert fleet_step(depth=depth, limit=limit, no_device=nodev, paused=paused) == expected
