"""Table tests for each placement rule, written as plain data."""

from __future__ import annotations

from typing import Any

import pytest

from edgetpud.placement import ModelSpec, plan
from tests.support.placement import dev

PCI = "pci:0000:03:00.0"
U3 = "usb:2-1"
U2 = "usb:1-2"
MIB = 1024 * 1024

# (case, devices as {identity: dev() keyword args}, models as ModelSpec kwargs, expected {model: (tier, targets)})
CASES: list[
    tuple[
        str, dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, tuple[str, tuple[str, ...]]]
    ]
] = [
    (
        "rejected device gets nothing",
        {U3: {"verdict": "rejected"}},
        [{"name": "a"}],
        {"a": ("waiting", ())},
    ),
    (
        "pinned to a usable device",
        {PCI: {}, U3: {}},
        [{"name": "a", "priority": 90}, {"name": "b", "device": U3, "priority": 10}],
        {"a": ("dedicated", (PCI,)), "b": ("dedicated", (U3,))},
    ),
    (
        "pinned to a rejected device falls back",
        {U3: {"verdict": "rejected"}},
        [{"name": "a", "device": U3, "cpu_fallback": True}],
        {"a": ("cpu", ("cpu",))},
    ),
    (
        "higher priority gets PCIe",
        {PCI: {}, U3: {}},
        [{"name": "low", "priority": 10}, {"name": "high", "priority": 90}],
        {"high": ("dedicated", (PCI,)), "low": ("dedicated", (U3,))},
    ),
    (
        "USB 3 before USB 2",
        {U2: {"speed": 480}, U3: {}},
        [{"name": "a"}],
        {"a": ("dedicated", (U3,))},
    ),
    (
        "900 mA port for max",
        {U3: {"budget": 500}, "usb:3-1": {"budget": 900}},
        [{"name": "a", "performance": "max"}],
        {"a": ("dedicated", ("usb:3-1",))},
    ),
    (
        "degraded only when nothing better",
        {U2: {"verdict": "degraded", "speed": 5000}, U3: {}},
        [{"name": "a"}, {"name": "b", "priority": 10}],
        {"a": ("dedicated", (U3,)), "b": ("dedicated", (U2,))},
    ),
    (
        "replicas on distinct devices",
        {PCI: {}, U3: {}, U2: {}},
        [{"name": "a", "replicas": 2}, {"name": "b", "priority": 10}],
        {"a": ("dedicated", (PCI, U3)), "b": ("dedicated", (U2,))},
    ),
    (
        "lowest priority share",
        {PCI: {}, U3: {}},
        [
            {"name": "a", "priority": 90},
            {"name": "b", "priority": 50},
            {"name": "c", "priority": 10},
        ],
        {"a": ("dedicated", (PCI,)), "b": ("shared", (U3,)), "c": ("shared", (U3,))},
    ),
    (
        "co-compiled together first",
        {PCI: {}, U3: {}},
        [
            {"name": "a", "priority": 90},
            {"name": "b", "priority": 50, "caching_token": 7},
            {"name": "c", "priority": 10, "caching_token": 7},
        ],
        {"a": ("dedicated", (PCI,)), "b": ("shared", (U3,)), "c": ("shared", (U3,))},
    ),
    (
        "memory limit respected",
        {PCI: {}, U3: {}},
        [
            {"name": "a", "priority": 90, "param_bytes": 2 * MIB},
            {"name": "b", "priority": 50, "param_bytes": 6 * MIB},
            {"name": "c", "priority": 10, "param_bytes": 5 * MIB},
        ],
        {"a": ("shared", (PCI,)), "b": ("dedicated", (U3,)), "c": ("shared", (PCI,))},
    ),
    (
        # issue 24: the two lowest took the PCIe module, the highest got a USB accelerator
        "priorities beat grouping: a co-compiled group shares only when devices run out",
        {PCI: {}, U3: {}, U2: {"speed": 480}},
        [
            {"name": n, "priority": p, "caching_token": 7, "param_bytes": MIB}
            for n, p in (("p10", 10), ("p5", 5), ("p3", 3), ("p1", 1))
        ],
        {
            "p10": ("dedicated", (PCI,)),
            "p5": ("dedicated", (U3,)),
            "p3": ("shared", (U2,)),
            "p1": ("shared", (U2,)),
        },
    ),
    ("no TPU: CPU fallback", {}, [{"name": "a", "cpu_fallback": True}], {"a": ("cpu", ("cpu",))}),
    ("no TPU, no cpu_model: waiting", {}, [{"name": "a"}], {"a": ("waiting", ())}),
    (
        "CPU build runs on CPU",
        {PCI: {}},
        [{"name": "a", "edgetpu": False}],
        {"a": ("cpu", ("cpu",))},
    ),
    ("disabled", {PCI: {}}, [{"name": "a", "enabled": False}], {"a": ("disabled", ())}),
]


@pytest.mark.parametrize(
    ("case", "devices", "models", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_rule(
    case: str,
    devices: dict[str, dict[str, Any]],
    models: list[dict[str, Any]],
    expected: dict[str, tuple[str, tuple[str, ...]]],
) -> None:
    result = plan([dev(i, **kw) for i, kw in devices.items()], [ModelSpec(**m) for m in models])
    got = {name: (p.tier, p.targets) for name, p in result.placements.items() if name in expected}
    assert got == expected, case
    assert all(p.reason for p in result.placements.values())


def test_stability_keeps_models_where_they_run_and_hotplug_moves_only_the_concerned() -> None:
    devices = [dev(U3), dev("usb:3-1"), dev("usb:4-1")]
    models = [ModelSpec("a", 90), ModelSpec("b", 50), ModelSpec("c", 10)]
    first = plan(devices, models)
    assert plan(devices, models, first).moves == ()
    on = {m: p.targets[0] for m, p in first.placements.items()}
    unplugged = plan([d for d in devices if d.identity != on["c"]], models, first)
    assert [m.model for m in unplugged.moves] == ["c"]
    plugged = plan([*devices, dev(PCI)], models, first)
    assert [m.model for m in plugged.moves] == ["a"]  # the top model improves USB -> PCIe
    assert plugged.placements["a"].targets == (PCI,)


# Stability cases, as plain data: (case, devices before, devices after, models,
# models expected to move, expected placements after).
STABILITY: list[
    tuple[str, list[str], list[str], list[dict[str, Any]], set[str], dict[str, tuple[str, ...]]]
] = [
    (
        "a new device never demotes an equal-priority model",
        [U3, "usb:3-1"],
        [U3, "usb:3-1", "usb:4-1"],
        [{"name": n} for n in ("a", "b", "c", "d")],
        {"a"},  # one model of a shared pair gets the new device; nobody loses a TPU
        {"a": ("usb:4-1",), "b": ("usb:3-1",), "c": (U3,), "d": ("usb:3-1",)},
    ),
    (
        "an unplug does not make equal-priority replicas trade devices",
        [PCI, U3, "usb:3-1", "usb:4-1"],
        [PCI, U3, "usb:3-1"],
        [{"name": "a", "replicas": 2}, {"name": "b", "replicas": 2}],
        {"b"},
        {"a": (PCI, "usb:3-1"), "b": (U3,)},
    ),
    (
        "a PCIe-only model gets the module; the other model moves to a free accelerator",
        [PCI, "pci:0000:04:00.0", U3],
        [PCI, U3],
        [{"name": "any"}, {"name": "pcionly", "device": "pci"}],
        {"any", "pcionly"},
        {"any": (U3,), "pcionly": (PCI,)},
    ),
]


Stability = tuple[
    str, list[str], list[str], list[dict[str, Any]], set[str], dict[str, tuple[str, ...]]
]


@pytest.mark.parametrize("example", STABILITY, ids=[c[0] for c in STABILITY])
def test_stability(example: Stability) -> None:
    case, before, after, models, movers, expected = example
    specs = [ModelSpec(**m) for m in models]
    first = plan([dev(i) for i in before], specs)
    second = plan([dev(i) for i in after], specs, first)
    assert {m.model for m in second.moves} == movers, (case, first, second)
    got = {name: p.targets for name, p in second.placements.items()}
    assert got == expected, case


# USB buses, as plain data: (case, USB 3 accelerators, models, expected {model: device}).
BUSES: list[tuple[str, list[str], list[dict[str, Any]], dict[str, str]]] = [
    (
        "busy models spread across buses before stacking on one",
        ["usb:1-1", "usb:1-2", "usb:2-1"],
        [{"name": "a", "priority": 90}, {"name": "b", "priority": 80}],
        {"a": "usb:1-1", "b": "usb:2-1"},
    ),
    (
        "and across hubs on one bus",
        ["usb:1-2.1", "usb:1-2.2", "usb:1-3"],
        [{"name": "a", "priority": 90}, {"name": "b", "priority": 80}],
        {"a": "usb:1-2.1", "b": "usb:1-3"},
    ),
    (
        "a better device still comes before a quieter bus",
        ["usb:1-1", "usb:1-2"],
        [{"name": "a", "priority": 90}, {"name": "b", "priority": 80}],
        {"a": "usb:1-1", "b": "usb:1-2"},
    ),
]


@pytest.mark.parametrize("example", BUSES, ids=[c[0] for c in BUSES])
def test_usb_buses(example: tuple[str, list[str], list[dict[str, Any]], dict[str, str]]) -> None:
    case, devices, models, expected = example
    result = plan([dev(i) for i in devices], [ModelSpec(**m) for m in models])
    assert {m: p.targets[0] for m, p in result.placements.items()} == expected, case
    again = plan([dev(i) for i in devices], [ModelSpec(**m) for m in models], result)
    assert again.moves == (), case


def test_when_two_must_share_a_bus_the_model_with_the_fewest_bytes_shares() -> None:
    devices = [dev("usb:1-1"), dev("usb:1-2"), dev("usb:2-1")]
    models = [
        ModelSpec("big", 90, io_bytes=600_000),
        ModelSpec("small", 80, io_bytes=1_000),  # greedily, it would get bus 2 alone
        ModelSpec("big2", 70, io_bytes=600_000),
    ]
    result = plan(devices, models)
    bus = {m: p.targets[0].split(":")[1].split("-")[0] for m, p in result.placements.items()}
    assert bus["big"] != bus["big2"], result
    assert plan(devices, models, result).moves == ()


def test_plan_says_which_bus_an_accelerator_is_on() -> None:
    devices = [dev("usb:1-1"), dev("usb:1-2"), dev("usb:4-1")]
    models = [
        ModelSpec("a", 90, io_bytes=150_528),
        ModelSpec("b", 80, io_bytes=150_528),
        ModelSpec("c", 70, io_bytes=150_528),
    ]
    reasons = {m: p.reason for m, p in plan(devices, models).placements.items()}
    assert "usb:4-1: the only accelerator on bus 4" in reasons["b"]
    assert "usb:1-2 shares bus 1 with busy usb:1-1" in reasons["c"]
    assert "294 KiB per inference" in reasons["c"]
    only = plan(devices, models[:1]).placements["a"].reason
    assert "usb:1-1: the only busy accelerator on bus 1" in only


def test_a_pipelined_model_takes_a_device_per_segment_and_says_so() -> None:
    pipe = ModelSpec("ssd", 50, replicas=2, segments=2)
    two = plan([dev(U3), dev("usb:3-1")], [pipe]).placements["ssd"]
    assert two.tier == "dedicated" and set(two.targets) == {U3, "usb:3-1"}
    assert "a pipeline of 2 segments, each on an Edge TPU of its own" in two.reason
    one = plan([dev(U3)], [pipe]).placements["ssd"]
    assert one.targets == (U3,)
    assert "segments take turns on one" in one.reason and "add an Edge TPU" in one.reason
    # its second stage is an extra device: a higher-priority model's first one comes first
    other = ModelSpec("doorbell", 90)
    both = plan([dev(U3), dev("usb:3-1")], [pipe, other]).placements
    assert len(both["ssd"].targets) == 1 and len(both["doorbell"].targets) == 1
