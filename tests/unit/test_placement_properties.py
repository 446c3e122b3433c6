"""Invariants of the placement engine over random device and model sets (hypothesis).

Each property states one sentence of docs/placement.md ("What the planner
guarantees"); the words "better off", "concerns" and "could use" mean exactly what
that page says, and `tests.support.placement.standing` is that definition in code.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from edgetpud.devices.model import DeviceInfo
from edgetpud.placement import (
    CPU,
    ON_CHIP_BYTES,
    TIER_RANK,
    ModelSpec,
    Placement,
    Plan,
    device_score,
    plan,
)
from tests.support.examples import examples
from tests.support.placement import best_class, dev, moved, standing, targets

MIB = 1024 * 1024
CASES = settings(max_examples=examples(2000), deadline=None)


# Hypothesis costs about a millisecond per example whatever the test does, so the
# properties are checked in two tests, each generated case against every property of
# its group (each property still sees all 2,000 cases), and each set of records is one
# draw: a byte string whose first byte picks how many records and whose other bytes pick
# their attributes. It shrinks to fewer and plainer records (zero bytes: no record, or
# the plainest one).


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


def devices_from(data: bytes) -> list[DeviceInfo]:
    """The first byte says how many devices (0-6), then two bytes per device."""
    count = data[0] % 7
    codes = [int.from_bytes(data[1 + 2 * i : 3 + 2 * i], "big") for i in range(count)]
    return [_device(i, c % DEVICE_CODES) for i, c in enumerate(codes)]


SELECTORS = ["any"] * 6 + ["pci", "usb", "cpu", "usb:1-1", "pci:0000:00:00.0", "usb:9-9"]
SIZES = [0, 3 * MIB, 6 * MIB, MIB // 2]


IO_BYTES = [0, 150_528, 600_000, 1_000]  # per model index: what crosses a USB bus


def _model(i: int, code: int) -> ModelSpec:
    """Model `i` from `code`: the fields below MODEL_CODES as they always were (kept
    examples decode the same), and beyond it whether it is a pipeline of 2 segments."""
    spec = _plain_model(i, code % MODEL_CODES)
    if (code // MODEL_CODES) % 4 == 3 and spec.edgetpu:
        spec = replace(spec, segments=2, replicas=2)
    return spec


def _plain_model(i: int, code: int) -> ModelSpec:
    return ModelSpec(
        io_bytes=IO_BYTES[i % len(IO_BYTES)],
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


def models_from(data: bytes) -> list[ModelSpec]:
    """The first byte says how many models (0-7), then three bytes per model."""
    count = data[0] % 8
    codes = [int.from_bytes(data[1 + 3 * i : 4 + 3 * i], "big") for i in range(count)]
    return [_model(i, c) for i, c in enumerate(codes)]


DEVICE_BYTES, MODEL_BYTES = 13, 22
CASE = DEVICE_BYTES + MODEL_BYTES


def case_from(data: bytes) -> tuple[list[DeviceInfo], list[ModelSpec]]:
    """Devices and models from DEVICE_BYTES + MODEL_BYTES bytes, noted for a failure report."""
    devices, models = devices_from(data[:DEVICE_BYTES]), models_from(data[DEVICE_BYTES:CASE])
    note(f"devices = {devices!r}")
    note(f"models = {models!r}")
    return devices, models


def _allows(selector: str, device: DeviceInfo) -> bool:
    """The user's `device = ...` selector admits this device."""
    return selector in ("any", device.kind) or selector == device.identity


# ---------------------------------------------------------------- one plan


def check_only_usable_devices_and_distinct_replicas(
    devices: list[DeviceInfo], models: list[ModelSpec], result: Plan
) -> None:
    """No model on a rejected (or gone) device or one its selector does not allow;
    replicas on distinct devices; every placement has a reason."""
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
    """The on-chip memory rule comes before priority: model `a` shares its TPU with a
    lower-priority model whose parameters would not fit next to `b`'s on `b`'s TPU, or
    `b` taking `a`'s place would put that TPU's parameters over the on-chip memory."""
    loads = {d: sum(specs[m].param_bytes for m in ms) for d, ms in result.device_models().items()}
    b_load = max(loads[t] for t in result.placements[b].targets if t in loads)
    here = result.placements[a].targets[0]
    if loads[here] <= ON_CHIP_BYTES < loads[here] - specs[a].param_bytes + specs[b].param_bytes:
        return True
    return any(
        specs[o].param_bytes + b_load > ON_CHIP_BYTES
        for o in result.placements[a].sharing
        if specs[o].priority < specs[a].priority
    )


def check_higher_priority_never_worse_off(
    devices: list[DeviceInfo], models: list[ModelSpec], result: Plan
) -> None:
    """A higher-priority model is never worse off than a lower-priority one on a TPU it
    could use. Two stated exceptions (docs/placement.md): (1) the on-chip memory rule
    comes first: a model may share with a lower-priority model whose parameters would not
    fit next to the other's, or stay sharing when the other model's parameters would not
    fit in its place; (2) a model restricted to device = "pci"/"usb" keeps a device
    of its kind: a higher-priority unrestricted model may get a lower class of device for
    it, or share a TPU the restricted model could not move to. Pinned models and
    co-compiled groups that stay cached together (they count as dedicated) are placed by
    their own rules (1 and 4): they are compared by tier, never by class of device."""
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


def check_free_pcie_before_usb(
    devices: list[DeviceInfo], models: list[ModelSpec], result: Plan
) -> None:
    """While a PCIe module (not degraded) is idle, no unrestricted model runs on USB."""
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
@given(st.binary(min_size=CASE, max_size=CASE))
def test_a_plan_keeps_the_rules(data: bytes) -> None:
    """Every generated case is checked against each property of a single plan."""
    devices, models = case_from(data)
    result = plan(devices, models)
    check_only_usable_devices_and_distinct_replicas(devices, models, result)
    check_higher_priority_never_worse_off(devices, models, result)
    check_free_pcie_before_usb(devices, models, result)


# ---------------------------------------------------------------- re-planning


def check_replanning_unchanged_input_moves_nothing(
    devices: list[DeviceInfo], models: list[ModelSpec], earlier: Plan
) -> None:
    """Whatever ran before, planning again with the same devices and models moves
    nothing."""
    first = plan(devices, models, earlier)
    check_only_usable_devices_and_distinct_replicas(devices, models, first)
    again = plan(devices, models, first)
    assert again.moves == (), again.moves
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


def check_adding_a_device_never_makes_a_model_worse_off(
    devices: list[DeviceInfo], models: list[ModelSpec], new: DeviceInfo
) -> None:
    """No model gets a worse tier, and one that moves either is better off for it or
    made room for a model that needed it more (the same reasons as for a removal)."""
    before = plan(devices, models)
    after = plan([*devices, new], models, before)
    for name, now in after.placements.items():
        old = before.placements[name]
        assert TIER_RANK[now.tier] >= TIER_RANK[old.tier], f"{name}: {old} -> {now}"
    by_id = {d.identity: d for d in [*devices, new]}
    specs = {m.name: m for m in models}
    assert not _unjustified_moves(before, after, specs, by_id)


def check_removing_a_device_moves_only_what_it_concerns(
    devices: list[DeviceInfo], models: list[ModelSpec], gone: DeviceInfo
) -> None:
    """A removal concerns the models that had a replica on the removed device. Any other
    model moves only when the move leaves it better off, or when it gave its device to a
    model that needed it more: one of strictly higher priority (that took the device, or
    that shared it and now has it to itself); another model's first replica (when it was
    an extra replica); or a model restricted to that kind of device while this one keeps
    its tier on another device."""
    rest = [d for d in devices if d is not gone]
    before = plan(devices, models)
    after = plan(rest, models, before)
    by_id = {d.identity: d for d in rest}
    specs = {m.name: m for m in models}
    assert not _unjustified_moves(before, after, specs, by_id)


# Cases hypothesis found once, kept so that every run checks them: a trade chain that
# stranded a same-priority model off its device on an unplug (two of them), and a
# device freed by a move that went to the next model in line instead of the
# higher-priority one waiting (on a plug).
@CASES
@given(st.binary(min_size=2 * CASE + 3, max_size=2 * CASE + 3))
@example(
    b'\xad\x00\x00\x01\x01\x01\x02\x02\x01\x00\x00\x00\x00\x06\x07\x00\x00\x00\x01\x00"\xd6\x00\x8d\xba\xe0\x00\x0c\x18\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\x00'
)
@example(
    b"\xad\x00\x00\x01\x01\x01\x08\x02\x01\x00\x00\x00\x00\x06^\x08,\x00\x01\x00q\xd6F\x8d\xba\xe0\x19]\\\x18\x00\x98\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\x00"
)
@example(
    b"\xba\x00\x00\x01b\x00\x00\x00\x00\x00\x00\x00\x00\x05\xd9\x01w\x00\x00\x00\xe3,\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00"
)
def test_replanning_keeps_the_rules(data: bytes) -> None:
    """Every generated case is checked against each re-planning property: replanning
    after an arbitrary earlier plan, adding a device, and removing one (from the device
    set with the new one added, so there is always one to remove)."""
    devices, models = case_from(data)
    other_devices, other_models = case_from(data[CASE:])
    check_replanning_unchanged_input_moves_nothing(
        devices, models, plan(other_devices, other_models)
    )
    new = _device(len(devices), int.from_bytes(data[-3:-1], "big") % DEVICE_CODES)
    note(f"new = {new!r}")
    check_adding_a_device_never_makes_a_model_worse_off(devices, models, new)
    grown = [*devices, new]
    gone = grown[data[-1] % len(grown)]
    note(f"gone = {gone.identity}")
    check_removing_a_device_moves_only_what_it_concerns(grown, models, gone)


# ---------------------------------------------------------------- priority


def _first_device(
    p: Placement, by_id: dict[str, DeviceInfo], performance: str
) -> tuple[object, ...]:
    """How well off a model is, for the priority property: its tier, then, on a TPU of its
    own, the class of its (first) device. Shared TPUs are compared by tier only: which
    one a model shares, and with how many, depends on how many others must share."""
    if p.tier != "dedicated":
        return (TIER_RANK[p.tier],)
    return (TIER_RANK[p.tier], device_score(by_id[p.targets[0]], performance))


def _kept_for_restricted(
    result: Plan, specs: dict[str, ModelSpec], raised: ModelSpec, kind: str
) -> bool:
    """The stated exception: a lower-priority model restricted to `kind` (device = "pci" or
    "usb") runs on a device of that kind, so the raised model may have left it (or let
    such a model join it there, parameters cached)."""
    return any(
        specs[name].device == kind
        and specs[name].priority < raised.priority
        and any(t.startswith(f"{kind}:") for t in p.targets)
        for name, p in result.placements.items()
    )


def _joined_by_restricted_partner(
    after: Placement, specs: dict[str, ModelSpec], raised: ModelSpec, by_id: dict[str, DeviceInfo]
) -> bool:
    """The same exception seen from the other side: the raised model took a better kind of
    device, and a lower-priority model restricted to that kind and co-compiled with it
    joined it there, parameters cached (co-compiled models go together first)."""
    if after.tier != "shared" or not after.cached or not after.targets:
        return False
    kind = by_id[after.targets[0]].kind
    return raised.caching_token is not None and all(
        specs[m].device == kind
        and specs[m].caching_token == raised.caching_token
        and specs[m].priority < raised.priority
        for m in after.sharing
    )


# Found on the planner before issue 24: co-compiled models took a device from a model
# of their group because it had a higher priority (it was moved off to make room).
@CASES
@given(st.binary(min_size=CASE + 2, max_size=CASE + 2))
@example(
    b"\x81\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x04\x13\xa2Ue\x00\x01\x00\x00\x00\x00\xb4\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'"
)
# Found by a random run (2026-12-05): m5 (co-compiled with m0, which is restricted to
# "pci") raised to the top priority takes a PCIe module, and m0 joins it there.
@example(
    b"\x04\\\x9e\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x06 \xc9\x8e\x00\x00\x00\xc0\x00\x00\x00\xde"
    b"\x00\x00\x019!\x8f*\x00\x00\x005\x00"
)
def test_raising_a_priority_never_gives_a_worse_device(data: bytes) -> None:
    """For any devices and models, a model whose priority is raised (the rest unchanged)
    gets no worse a tier in a fresh plan, and, on a TPU of its own, no worse a device.
    The stated exception (docs/placement.md): a lower-priority model restricted to the
    kind of device it had ("pci" or "usb") keeps one of that kind, so the raised model
    may leave it for a TPU of its own elsewhere, or share it with that model when the
    two are co-compiled and stay cached."""
    devices, models = case_from(data)
    if not models:
        return
    i = data[CASE] % len(models)
    raised = replace(models[i], priority=models[i].priority + 1 + data[CASE + 1] % 100)
    note(f"raised = {raised!r}")
    by_id = {d.identity: d for d in devices}
    specs = {m.name: m for m in models}
    before = plan(devices, models).placements[raised.name]
    later = plan(devices, [*models[:i], raised, *models[i + 1 :]])
    after = later.placements[raised.name]
    if before.tier == "dedicated" and _kept_for_restricted(
        later, specs, raised, by_id[before.targets[0]].kind
    ):
        return
    if _joined_by_restricted_partner(after, specs, raised, by_id):
        return
    perf = raised.performance
    assert _first_device(after, by_id, perf) >= _first_device(before, by_id, perf), (
        f"{raised.name}: {before} -> {after}"
    )
