"""Invariants of the placement engine over random device and model sets (hypothesis).

Each property states one sentence of docs/placement.md ("What the planner
guarantees"); the words "better off", "concerns" and "could use" mean exactly what
that page says, and `tests.support.placement.standing` is that definition in code.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edgetpud.devices.model import DeviceInfo
from edgetpud.placement import (
    CPU,
    ON_CHIP_BYTES,
    TIER_RANK,
    ModelSpec,
    Plan,
    device_score,
    plan,
)
from tests.support.examples import examples
from tests.support.placement import best_class, dev, moved, standing, targets

MIB = 1024 * 1024
CASES = settings(max_examples=examples(2000), deadline=None)


# Each record is drawn as one integer whose digits pick its attributes: far cheaper than
# one draw per attribute (2,000 cases per property stay fast), and it still shrinks to 0,
# the plainest record.


def _pick(code: int, base: int, choices: list[Any]) -> Any:
    return choices[(code // base) % len(choices)]


def _device(i: int, code: int) -> DeviceInfo:
    kind = _pick(code, 1, ["usb", "pci", "usb"])
    identity = f"pci:0000:0{i}:00.0" if kind == "pci" else f"usb:{i % 2 + 1}-{i + 1}"
    return dev(
        identity,
        speed=_pick(code, 3, [5000, 480]),
        verdict=_pick(code, 6, ["ok", "ok", "ok", "degraded", "rejected"]),
        budget=_pick(code, 30, [900, 500]),
        state=_pick(code, 60, ["ready"] * 5 + ["dfu", "gone"]),
    )


DEVICE_CODES = 420


def device_sets(min_size: int = 0) -> st.SearchStrategy[list[DeviceInfo]]:
    codes = st.lists(st.integers(0, DEVICE_CODES - 1), min_size=min_size, max_size=6)
    return codes.map(lambda cs: [_device(i, c) for i, c in enumerate(cs)])


SELECTORS = ["any"] * 6 + ["pci", "usb", "cpu", "usb:1-1", "pci:0000:00:00.0", "usb:9-9"]
SIZES = [0, 3 * MIB, 6 * MIB, MIB // 2]


def _model(i: int, code: int) -> ModelSpec:
    return ModelSpec(
        name=f"m{i}",
        priority=_pick(code, 1, [50, 10, 90, 100, 50]),
        replicas=_pick(code, 5, [1, 1, 1, 2, 3]),
        device=_pick(code, 25, SELECTORS),
        performance=_pick(code, 25 * 12, ["std", "max"]),
        edgetpu=_pick(code, 25 * 24, [True] * 9 + [False]),
        cpu_fallback=_pick(code, 25 * 240, [False, True]),
        caching_token=_pick(code, 25 * 480, [None, None, 1, 2]),
        param_bytes=_pick(code, 25 * 1920, SIZES),
        enabled=_pick(code, 25 * 7680, [True] * 9 + [False]),
    )


MODEL_CODES = 25 * 76800


def model_sets() -> st.SearchStrategy[list[ModelSpec]]:
    codes = st.lists(st.integers(0, MODEL_CODES - 1), max_size=7)
    return codes.map(lambda cs: [_model(i, c) for i, c in enumerate(cs)])


def _allows(selector: str, device: DeviceInfo) -> bool:
    """The user's `device = ...` selector admits this device."""
    return selector in ("any", device.kind) or selector == device.identity


@CASES
@given(device_sets(), model_sets())
def test_only_usable_devices_and_distinct_replicas(
    devices: list[DeviceInfo], models: list[ModelSpec]
) -> None:
    result = plan(devices, models)
    usable = {d.identity: d for d in devices if d.usable}
    specs = {m.name: m for m in models}
    for name, p in result.placements.items():
        spec = specs[name]
        assert len(set(p.targets)) == len(p.targets), f"{name} has a replica twice: {p.targets}"
        assert set(p.targets) <= set(usable) | {CPU}, f"{name} placed on an unusable device"
        assert all(_allows(spec.device, usable[t]) for t in p.targets if t != CPU), p
        assert len(p.targets) <= max(1, spec.replicas)
        if p.tier in ("dedicated", "shared"):
            assert p.targets and CPU not in p.targets
        assert p.reason


def _memory_excuse(result: Plan, specs: dict[str, ModelSpec], a: str, b: str) -> bool:
    """Model `a` shares its TPU with a model whose parameters would not fit next to `b`'s
    on `b`'s TPU (the on-chip memory rule comes before priority)."""
    loads = {d: sum(specs[m].param_bytes for m in ms) for d, ms in result.device_models().items()}
    b_load = max(loads[t] for t in result.placements[b].targets if t in loads)
    return any(
        specs[o].param_bytes + b_load > ON_CHIP_BYTES
        for o in result.placements[a].sharing
        if specs[o].priority < specs[a].priority
    )


@CASES
@given(device_sets(), model_sets())
def test_higher_priority_never_worse_off(
    devices: list[DeviceInfo], models: list[ModelSpec]
) -> None:
    """A higher-priority model is never worse off than a lower-priority one on a TPU it
    could use. Two stated exceptions (docs/placement.md): (1) the on-chip memory rule
    comes first: a model may share with a lower-priority model whose parameters would not
    fit next to the other's; (2) a model restricted to device = "pci"/"usb" keeps a device
    of its kind: a higher-priority unrestricted model may get a lower class of device for
    it, or share a TPU the restricted model could not move to. Pinned models and co-compiled groups that stay cached
    together (they count as dedicated) are placed by their own rules (1 and 4): they are
    compared by tier, never by class of device."""
    result = plan(devices, models)
    by_id = {d.identity: d for d in devices}
    specs = {m.name: m for m in models}
    on_tpu = {
        m.name: result.placements[m.name]
        for m in models
        if result.placements[m.name].tier in ("dedicated", "shared")
    }
    for a, pa in on_tpu.items():
        sa = specs[a]
        for b, pb in on_tpu.items():
            sb = specs[b]
            if sa.priority <= sb.priority or sb.device not in ("any", "pci", "usb"):
                continue
            if pb.tier == "shared" and pb.cached:
                continue
            usable_to_a = [by_id[t] for t in pb.targets if _allows(sa.device, by_id[t])]
            if not usable_to_a:
                continue  # a could not use b's devices
            if pa.level < pb.level:
                cannot_trade = not any(_allows(sb.device, by_id[t]) for t in pa.targets)
                assert cannot_trade or _memory_excuse(result, specs, a, b), (
                    f"{a} ({pa}) worse off than {b} ({pb})"
                )
            elif pa.tier == pb.tier == "dedicated" and sb.device == "any":
                theirs = max(device_score(d)[:3] for d in usable_to_a)
                assert best_class(pa, by_id) >= theirs, (pa, pb)


@CASES
@given(device_sets(), model_sets())
def test_free_pcie_before_usb(devices: list[DeviceInfo], models: list[ModelSpec]) -> None:
    result = plan(devices, models)
    used = result.device_models()
    idle_pci = [
        d
        for d in devices
        if d.usable and d.kind == "pci" and d.verdict == "ok" and not used[d.identity]
    ]
    if not idle_pci:
        return
    by_id = {d.identity: d for d in devices}
    for m in models:
        if m.device == "any":
            kinds = {by_id[t].kind for t in result.placements[m.name].targets if t in by_id}
            assert "usb" not in kinds, f"{m.name} on USB while {idle_pci[0].identity} is idle"


@CASES
@given(device_sets(), model_sets(), device_sets(), model_sets())
def test_replanning_unchanged_input_moves_nothing(
    devices: list[DeviceInfo],
    models: list[ModelSpec],
    other_devices: list[DeviceInfo],
    other_models: list[ModelSpec],
) -> None:
    earlier = plan(other_devices, other_models)
    first = plan(devices, models, earlier)
    again = plan(devices, models, first)
    assert again.moves == ()
    assert targets(again) == targets(first)


def _unjustified_moves(
    before: Plan, after: Plan, specs: dict[str, ModelSpec], by_id: dict[str, DeviceInfo]
) -> list[str]:
    """Models that moved although the change did not concern them, without a reason the
    docs allow: better off, or it gave a device to a model that needed it more."""
    out = []
    for name in moved(before, after):
        old, now = before.placements[name], after.placements[name]
        if any(t not in by_id or not by_id[t].usable for t in old.targets if t != CPU):
            continue  # it concerns this model: one of its devices went away
        perf = specs[name].performance
        if standing(now, by_id, perf) > standing(old, by_id, perf):
            continue
        kept_tier = TIER_RANK[now.tier] >= TIER_RANK[old.tier]
        prio = specs[name].priority
        for t in set(old.targets) - set(now.targets):
            extra = t != old.targets[0]
            took = [
                other
                for other, p in after.placements.items()
                if t in p.targets
                and t not in before.placements[other].targets
                and (
                    specs[other].priority > prio
                    or (extra and p.targets[0] == t)
                    or (specs[other].device in ("pci", "usb") and kept_tier)
                )
            ]
            made_room = [
                other
                for other, p in after.placements.items()
                if t in p.targets
                and t in before.placements[other].targets
                and specs[other].priority > prio
                and TIER_RANK[p.tier] > TIER_RANK[before.placements[other].tier]
            ]
            if not took and not made_room:
                out.append(f"{name} gave up {t} for no reason: {old} -> {now}")
    return out


@CASES
@given(device_sets(), model_sets(), st.integers(0, DEVICE_CODES - 1))
def test_adding_a_device_never_makes_a_model_worse_off(
    devices: list[DeviceInfo], models: list[ModelSpec], code: int
) -> None:
    """No model gets a worse tier, and one that moves either is better off for it or
    made room for a model that needed it more (the same reasons as for a removal)."""
    new = _device(len(devices), code)
    before = plan(devices, models)
    after = plan([*devices, new], models, before)
    by_id = {d.identity: d for d in [*devices, new]}
    for name, now in after.placements.items():
        old = before.placements[name]
        assert TIER_RANK[now.tier] >= TIER_RANK[old.tier], f"{name}: {old} -> {now}"
    specs = {m.name: m for m in models}
    assert not _unjustified_moves(before, after, specs, by_id)


@CASES
@given(device_sets(min_size=1), model_sets(), st.data())
def test_removing_a_device_moves_only_what_it_concerns(
    devices: list[DeviceInfo], models: list[ModelSpec], data: st.DataObject
) -> None:
    """A removal concerns the models that had a replica on the removed device. Any other
    model moves only when the move leaves it better off, or when it gave its device to a
    model that needed it more: one of strictly higher priority (that took the device, or
    that shared it and now has it to itself); another model's first replica (when it was
    an extra replica); or a model restricted to that kind of device while this one keeps
    its tier on another device."""
    gone = data.draw(st.sampled_from(devices))
    rest = [d for d in devices if d is not gone]
    before = plan(devices, models)
    after = plan(rest, models, before)
    by_id = {d.identity: d for d in rest}
    specs = {m.name: m for m in models}
    assert not _unjustified_moves(before, after, specs, by_id)
