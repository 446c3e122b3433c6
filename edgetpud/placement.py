"""Placement: which model runs on which Edge TPU, and why. Pure: no threads, no I/O.

`plan(devices, models, current)` returns a `Plan`: for every model the device(s) it
runs on, or the CPU, or nothing (waiting), with a sentence saying why, plus the
moves from `current`. The service applies exactly those moves, so the planner is
stable: re-planning unchanged input moves nothing, and a device coming or going
only moves the models it concerns (and any that it lets improve).

Rules, in order (see docs/placement.md):
1. Rejected devices get nothing; a model pinned to a device identity gets it if usable.
2. Higher priority first; a model's first replica before anyone's second.
3. Better devices first: PCIe, then USB 3, then USB 2; 900 mA ports first for
   performance = "max"; degraded devices last.
4. One model per TPU while devices last, co-compiled or not (priorities beat grouping:
   no model gets a worse device so that lower-priority ones can share a better one);
   then share: co-compiled models together, never over the on-chip memory when
   another choice exists, then the lowest-priority models on the least-loaded device.
5. USB buses: among otherwise equal devices, spread busy models across buses and hubs;
   when two must share a bus, the one with the fewest bytes per inference shares it.
6. No TPU: CPU fallback when the model has a cpu_model and fallback is on, else wait.
7. Stability: every replica stays where it runs while its device is usable. A model
   moves only to be better off (a better tier or device, another replica), or to give
   its device to a model that needs it more: a strictly higher-priority one, another
   model's first replica (when it is an extra replica), or a model restricted to that
   kind of device while it keeps its tier elsewhere. Never for an equal-priority model.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from edgetpud.devices.model import DeviceInfo

if TYPE_CHECKING:
    from edgetpud.config import Config, ModelConfig
    from edgetpud.modelfile import ModelInfo

log = logging.getLogger(__name__)

SCHEMA = "edgetpud.plan/1"
ON_CHIP_BYTES = 8 * 1024 * 1024
CPU = "cpu"

Tier = Literal["dedicated", "shared", "cpu", "waiting", "disabled"]
TIER_RANK: dict[str, int] = {"disabled": 0, "waiting": 1, "cpu": 2, "shared": 3, "dedicated": 4}


@dataclass(frozen=True)
class ModelSpec:
    """What placement needs to know about one configured model."""

    name: str
    priority: int = 50
    replicas: int = 1
    device: str = "any"  # "any", "pci", "usb", "cpu", or a device identity
    performance: str = "std"  # "std" or "max"
    edgetpu: bool = True  # compiled for the Edge TPU; False: a plain CPU model
    cpu_fallback: bool = False  # has a cpu_model and runtime.cpu_fallback is on
    caching_token: int | None = None
    param_bytes: int = 0
    enabled: bool = True
    disabled_reason: str = ""  # why it cannot run at all (e.g. the model file is broken)
    io_bytes: int = 0  # input + output bytes per inference: what crosses a USB bus
    segments: int = 1  # a pipelined model: its stages take `replicas` (= segments) devices


@dataclass(frozen=True)
class Placement:
    """Where one model runs: device identities, ("cpu",), or () when waiting/disabled."""

    model: str
    targets: tuple[str, ...]
    tier: Tier
    reason: str
    cached: bool = False  # its parameters stay in on-chip memory on every target
    sharing: tuple[str, ...] = ()  # other models on the same Edge TPU(s)

    @property
    def level(self) -> int:
        """How well off the model is: a TPU shared only with co-compiled models that fit
        on chip counts as dedicated, since nothing is reloaded when they alternate."""
        if self.tier == "shared" and self.cached:
            return TIER_RANK["dedicated"]
        return TIER_RANK[self.tier]

    def to_json(self) -> dict[str, Any]:
        return {
            "placement": list(self.targets),
            "tier": self.tier,
            "cached": self.cached,
            "sharing_with": list(self.sharing),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Move:
    """One change the service must apply: stop `before`, start `after`."""

    model: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "from": list(self.before),
            "to": list(self.after),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Plan:
    placements: dict[str, Placement]
    moves: tuple[Move, ...] = ()
    devices: tuple[str, ...] = field(default=())  # identities of usable devices, in input order

    def device_models(self) -> dict[str, tuple[str, ...]]:
        """Device identity → models on it (every usable device, possibly with none)."""
        out: dict[str, list[str]] = {d: [] for d in self.devices}
        for p in self.placements.values():
            for t in p.targets:
                if t != CPU:
                    out.setdefault(t, []).append(p.model)
        return {d: tuple(sorted(ms)) for d, ms in out.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "models": {name: p.to_json() for name, p in self.placements.items()},
            "devices": {d: list(ms) for d, ms in self.device_models().items()},
            "moves": [m.to_json() for m in self.moves],
        }


def spec_from_config(
    name: str, model: ModelConfig, cfg: Config, info: ModelInfo | None
) -> ModelSpec:
    """A ModelSpec from a config table and the model file's inspection (None: not inspected)."""
    token = info.caching_tokens[0] if info is not None and info.caching_tokens else None
    edgetpu = info.edgetpu if info is not None else model.model.name.endswith("_edgetpu.tflite")
    has_cpu = model.cpu_model is not None
    segments = max(len(model.segments), 1)
    return ModelSpec(
        name=name,
        priority=model.priority,
        replicas=segments if segments > 1 else model.replicas,
        segments=segments,
        device=model.device,
        performance=model.performance or cfg.devices.performance,
        edgetpu=edgetpu,
        # device = "cpu" is an explicit choice: it needs the CPU build, not the fallback switch.
        cpu_fallback=has_cpu and (cfg.runtime.cpu_fallback or model.device == CPU),
        caching_token=token,
        param_bytes=info.param_bytes if info is not None else 0,
        enabled=model.enabled,
        io_bytes=sum(t.nbytes for t in (*info.inputs, *info.outputs)) if info is not None else 0,
    )


# ---------------------------------------------------------------- device facts


def device_score(dev: DeviceInfo, performance: str = "std") -> tuple[int, int, int, int]:
    """Bigger is better: not degraded, PCIe, USB 3, can give 900 mA (only for "max")."""
    fast = dev.kind == "pci" or dev.speed_mbps >= 5000
    power = 1 if performance != "max" or dev.can_supply_max else 0
    return (int(dev.verdict == "ok"), int(dev.kind == "pci"), int(fast), power)


def describe_device(dev: DeviceInfo) -> str:
    if dev.kind == "pci":
        text = f"PCIe module {dev.identity}"
    else:
        usb = "USB 3" if dev.speed_mbps >= 5000 else "USB 2" if dev.speed_mbps else "USB"
        text = f"USB accelerator {dev.identity} ({usb})"
    return text


def hubs_of(dev: DeviceInfo) -> frozenset[str]:
    """The external hubs (port paths) between the root hub and a USB accelerator."""
    return frozenset(h.port for h in dev.hub_chain if not h.port.startswith("usb"))


def _matches(selector: str, dev: DeviceInfo) -> bool:
    if selector == "any":
        return True
    if selector in ("pci", "usb"):
        return dev.kind == selector
    return dev.identity == selector


def _is_pin(selector: str) -> bool:
    return selector not in ("any", "pci", "usb", CPU)


# ---------------------------------------------------------------- the planner


class _State:
    """Working state of one planning run."""

    def __init__(
        self, devices: Sequence[DeviceInfo], models: Sequence[ModelSpec], current: Plan | None
    ) -> None:
        self.all = {d.identity: d for d in devices}
        self.usable = {d.identity: d for d in devices if d.usable}
        self.specs = {m.name: m for m in models}
        self.prev: dict[str, tuple[str, ...]] = {}
        self.prev_holders: dict[str, set[str]] = {}
        if current is not None:
            for p in current.placements.values():
                self.prev[p.model] = p.targets
                for t in p.targets:
                    self.prev_holders.setdefault(t, set()).add(p.model)
        self.residents: dict[str, list[str]] = {d: [] for d in self.usable}
        self.params: dict[str, int] = dict.fromkeys(self.usable, 0)
        self.targets: dict[str, list[str]] = {}
        self.cands: dict[str, list[str]] = {}
        self.scores: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        self.why: dict[str, str] = {}
        self.notes: dict[str, list[tuple[str, str]]] = {}  # model -> (device given up, text)
        self.done: dict[str, Placement] = {}
        self.cached: dict[str, bool] = {}  # per device, once placement is final
        self.n_placed = 0  # models on Edge TPUs, once placement is final

    def candidates(self, spec: ModelSpec) -> list[str]:
        """Usable devices the model's `device` selector allows, in input order."""
        found = self.cands.get(spec.name)
        if found is None:
            found = [d for d in self.usable if _matches(spec.device, self.usable[d])]
            self.cands[spec.name] = found
        return found

    def score(self, spec: ModelSpec, dev: str) -> tuple[int, int, int, int]:
        key = (dev, spec.performance)
        found = self.scores.get(key)
        if found is None:
            found = self.scores[key] = device_score(self.usable[dev], spec.performance)
        return found

    def put(self, spec: ModelSpec, dev: str) -> None:
        self.targets.setdefault(spec.name, []).append(dev)
        self.residents[dev].append(spec.name)
        self.params[dev] += spec.param_bytes

    def take(self, spec: ModelSpec, dev: str) -> None:
        """Remove the model's replica from `dev`."""
        self.targets[spec.name].remove(dev)
        self.residents[dev].remove(spec.name)
        self.params[dev] -= spec.param_bytes

    def move(self, spec: ModelSpec, old: str, new: str) -> None:
        """Move one replica from `old` to `new`, keeping its position among the replicas."""
        mine = self.targets[spec.name]
        mine[mine.index(old)] = new
        self.residents[old].remove(spec.name)
        self.params[old] -= spec.param_bytes
        self.residents[new].append(spec.name)
        self.params[new] += spec.param_bytes

    def free(self, spec: ModelSpec) -> list[str]:
        """Allowed devices nobody uses, that the model is not already on."""
        mine = self.targets.get(spec.name, ())
        return [d for d in self.candidates(spec) if not self.residents[d] and d not in mine]

    def free_key(self, spec: ModelSpec, dev: str) -> tuple[Any, ...]:
        """Sort key (smallest first) for a free device: best, then where it was, then unused."""
        score = self.score(spec, dev)
        prev = self.prev.get(spec.name, ())
        mine = prev.index(dev) if dev in prev else len(self.usable)  # its first replica first
        others = bool(self.prev_holders.get(dev, set()) - {spec.name})
        busy_bus, busy_hub, bus_bytes = self.bus_load(dev)
        return (
            -score[0], -score[1], -score[2], -score[3], mine,
            busy_bus, busy_hub, bus_bytes, others, dev,
        )  # fmt: skip

    def bus_load(self, dev: str) -> tuple[int, int, int]:
        """What else a USB accelerator would share its bus with: busy accelerators on its
        bus, busy ones below the same hub, and their models' bytes per inference."""
        here = self.usable[dev]
        if here.kind != "usb":
            return (0, 0, 0)
        hubs = hubs_of(here)
        bus = hub = size = 0
        for d, names in self.residents.items():
            other = self.usable[d]
            if d == dev or not names or other.kind != "usb" or other.bus != here.bus:
                continue
            bus += 1
            hub += bool(hubs & hubs_of(other))
            size += sum(self.specs[n].io_bytes for n in names)
        return (bus, hub, size)

    def share_key(self, spec: ModelSpec, dev: str) -> tuple[Any, ...]:
        """Sort key for a device to share: fits on chip, co-compiled, least loaded, ..."""
        fits = self.params[dev] + spec.param_bytes <= ON_CHIP_BYTES
        tok = spec.caching_token
        # Co-compiled only helps when the parameters stay on chip together.
        cocompiled = (
            fits
            and tok is not None
            and any(self.specs[r].caching_token == tok for r in self.residents[dev])
        )
        top = max((self.specs[r].priority for r in self.residents[dev]), default=-1)
        mine = dev in self.prev.get(spec.name, ())
        score = self.score(spec, dev)
        return (
            not fits,
            not cocompiled,
            len(self.residents[dev]),
            top,
            not mine,
            tuple(-s for s in score),
            dev,
        )

    def note(self, name: str, text: str, gave_up: str = "") -> None:
        """Why `name` moved; `gave_up`: the device it lost (the note lapses if it gets it back)."""
        self.notes.setdefault(name, []).append((gave_up, text))


def _rank(spec: ModelSpec) -> tuple[int, str]:
    """Processing order: higher priority first, then by name."""
    return (-spec.priority, spec.name)


def plan(
    devices: Sequence[DeviceInfo], models: Sequence[ModelSpec], current: Plan | None = None
) -> Plan:
    """Place `models` on `devices`; moves are relative to `current` (None: nothing runs yet).

    Stability first: every replica keeps the device it runs on while that device is
    usable and allowed. Models without an Edge TPU are then placed by the rules; a model
    moves otherwise only to get better off, or to give its device to a model that needs
    it more (a strictly higher-priority model, or another model's first replica when it
    is an extra replica).
    """
    st = _State(devices, models, current)
    order = sorted(models, key=_rank)
    tpu: list[ModelSpec] = []
    for spec in order:
        if not spec.enabled or spec.disabled_reason:
            why = spec.disabled_reason or "enabled = false in the configuration"
            st.done[spec.name] = Placement(spec.name, (), "disabled", why)
        elif spec.device == CPU or not spec.edgetpu:
            st.done[spec.name] = _cpu_only(spec)
        else:
            tpu.append(spec)

    # Rule 1: pins take their device first; a pinned device is no longer free for others.
    pinned: set[str] = set()
    for spec in tpu:
        if not _is_pin(spec.device):
            continue
        if spec.device in st.usable:
            st.put(spec, spec.device)
            pinned.add(spec.device)
            st.why[spec.name] = f"pinned by device = {spec.device!r}"
        else:
            st.done[spec.name] = _fallback(spec, _pin_problem(spec, st))
    movable = [s for s in tpu if not _is_pin(s.device)]

    # Rule 7: every replica stays where it runs while that device is usable and allowed.
    for spec in movable:
        for t in st.prev.get(spec.name, ()):
            if len(st.targets.get(spec.name, ())) >= spec.replicas:
                break
            mine = st.targets.get(spec.name, ())
            if t in st.usable and t not in mine and _matches(spec.device, st.usable[t]):
                st.put(spec, t)

    _place_first_replicas(st, [s for s in movable if not st.targets.get(s.name)])
    _improve(st, movable)
    _restore(st, movable)
    _add_replicas(st, movable)
    _balance_buses(st, movable)

    st.cached = {d: _cached_together(st, d) for d in st.usable}
    st.n_placed = sum(1 for names in st.targets.values() if names)
    for spec in tpu:
        if spec.name not in st.done:
            st.done[spec.name] = _tpu_placement(spec, st)
    placements = {m.name: st.done[m.name] for m in models}
    return Plan(placements, _moves(st, placements, current), tuple(st.usable))


def _place_first_replicas(st: _State, todo: list[ModelSpec]) -> None:
    """Rules 2-5 for models without an Edge TPU, highest priority first.

    A free device (leaving kind-restricted models devices of their kind); else a TPU
    where it joins co-compiled models that all stay cached; else one
    held by another model's extra replica; else, for a model restricted to a kind of
    device, one whose model can move to a free device of its own; else one held alone
    by a strictly lower-priority model, which is then placed again itself; else share.
    """
    queue = [(_rank(s), s) for s in todo]
    heapq.heapify(queue)
    # Models that may only use one kind of device: "any" models leave them enough of it.
    demand = {k: sum(1 for s in todo if s.device == k) for k in ("pci", "usb")}
    overflow: list[ModelSpec] = []
    while queue:
        spec = heapq.heappop(queue)[1]
        if spec.device in demand:
            demand[spec.device] -= 1
        displaced = _place_first_replica(st, spec, demand, overflow)
        if displaced is not None:
            if displaced.device in demand:
                demand[displaced.device] += 1
            heapq.heappush(queue, (_rank(displaced), displaced))
    for spec in overflow:
        st.put(spec, min(st.candidates(spec), key=lambda d: st.share_key(spec, d)))


def _place_first_replica(
    st: _State, spec: ModelSpec, demand: dict[str, int], overflow: list[ModelSpec]
) -> ModelSpec | None:
    """Give `spec` a device by the first rule that applies (see _place_first_replicas), or
    add it to `overflow` to share one at the end. Returns the model it displaced when
    that model has no device left, to be placed again."""
    cands = st.candidates(spec)
    if not cands:
        st.done[spec.name] = _fallback(spec, _no_device_problem(spec, st))
        return None
    free = st.free(spec)
    if spec.device == "any":
        free = _unreserved(st, free, demand) or free
    if free:
        st.put(spec, min(free, key=lambda d: st.free_key(spec, d)))
        return None
    # One model per TPU while devices last; then co-compiled models join their
    # group where all stay cached, before anyone is displaced or shares.
    partner = _cached_partners(st, spec, overflow)
    if partner:
        st.put(spec, min(partner, key=lambda d: st.share_key(spec, d)))
        return None
    if _take_from_extra_replica(st, spec, cands):
        return None
    if spec.device != "any" and _move_owner_to_free(st, spec, cands):
        return None
    held = [d for d in cands if _held_by_lower(st, spec, d)]
    if held:
        return _displace_lower(st, spec, held)
    overflow.append(spec)
    return None


def _take_from_extra_replica(st: _State, spec: ModelSpec, cands: list[str]) -> bool:
    """Put `spec` on a device held only by another model's extra replica, which gives it up."""
    spare = [d for d in cands if _extra_replica_only(st, d)]
    if not spare:
        return False
    dev = min(spare, key=lambda d: st.free_key(spec, d))
    _hand_over(st, dev, spec, ": first replicas come before extra ones")
    return True


def _move_owner_to_free(st: _State, spec: ModelSpec, cands: list[str]) -> bool:
    """For a model restricted to a kind of device: take one whose model can move to a free
    device it may use, the lowest priority first, and move that model there."""
    relocatable = [d for d in cands if _can_relocate(st, d)]
    if not relocatable:
        return False
    dev = min(
        relocatable,
        key=lambda d: (st.specs[st.residents[d][0]].priority, st.free_key(spec, d)),
    )
    owner = st.specs[st.residents[dev][0]]
    new = min(st.free(owner), key=lambda d: st.free_key(owner, d))
    st.move(owner, dev, new)
    st.note(
        owner.name,
        f"moved from {dev} to free {new}: {spec.name} can only use {spec.device!r}",
    )
    st.put(spec, dev)
    return True


def _displace_lower(st: _State, spec: ModelSpec, held: list[str]) -> ModelSpec | None:
    """Take one of `held` (each held alone by a lower-priority model) for `spec`; returns
    the displaced model when it has no device left."""
    # The lowest priority first; an unrestricted one before one that can only
    # run on that kind of device.
    dev = min(held, key=lambda d: (*_victim_key(st, d), st.free_key(spec, d)))
    owner = st.specs[st.residents[dev][0]]
    _hand_over(st, dev, spec, f" (priority {spec.priority} > {owner.priority})")
    return None if st.targets[owner.name] else owner


def _hand_over(st: _State, dev: str, spec: ModelSpec, why: str) -> None:
    """The model alone on `dev` gives it up to `spec`; `why` ends its note."""
    owner = st.specs[st.residents[dev][0]]
    st.take(owner, dev)
    st.note(owner.name, f"gave up {dev} to {spec.name}{why}", gave_up=dev)
    st.put(spec, dev)


def _cached_partners(st: _State, spec: ModelSpec, overflow: list[ModelSpec]) -> list[str]:
    """Devices where `spec` can join co-compiled models and all keep their parameters cached:
    not one that a model still waiting to share must use (it would spoil the cache)."""
    if spec.caching_token is None:
        return []
    forced = {st.candidates(o)[0] for o in overflow if len(st.candidates(o)) == 1}
    return [
        d
        for d in st.candidates(spec)
        if st.residents[d] and d not in forced and _joins_cached(st, spec, d)
    ]


def _extra_replica_only(st: _State, dev: str) -> bool:
    """True when `dev` holds only one model's second (third, ...) replica."""
    names = st.residents[dev]
    return len(names) == 1 and st.targets[names[0]][0] != dev


def _can_relocate(st: _State, dev: str) -> bool:
    """True when `dev` holds one movable model that could have a free device to itself."""
    names = st.residents[dev]
    if len(names) != 1:
        return False
    owner = st.specs[names[0]]
    return not _is_pin(owner.device) and bool(st.free(owner))


def _victim_key(st: _State, dev: str) -> tuple[int, bool]:
    owner = st.specs[st.residents[dev][0]]
    return (owner.priority, owner.device != "any")


def _held_by_lower(st: _State, spec: ModelSpec, dev: str) -> bool:
    """True when `dev` holds one movable model, of lower priority than `spec`."""
    names = st.residents[dev]
    if len(names) != 1:
        return False
    owner = st.specs[names[0]]
    return owner.priority < spec.priority and not _is_pin(owner.device)


def _improve(st: _State, movable: list[ModelSpec]) -> None:
    """Use free devices to make models better off, highest priority first, until none can.

    A model sharing a TPU gets one to itself: it moves to a better free device, or else
    the lowest-priority model it shares with moves out to the free one. A model alone
    on a TPU moves to a strictly better free device. Nobody is made worse off. After
    each change the search starts again from the top, so a device one move frees goes
    to the highest-priority model that can use it, not to the next one in line."""
    while _use_a_free_device(st, movable) or _swap_with_lower(st, movable):
        pass


def _use_a_free_device(st: _State, movable: list[ModelSpec]) -> bool:
    """The first improvement with a free device, highest priority first; True if one was made."""
    for spec in movable:
        for t in list(st.targets.get(spec.name, ())):
            free = st.free(spec)
            if not free:
                break
            best = min(free, key=lambda d: st.free_key(spec, d))
            better = st.score(spec, best) > st.score(spec, t)
            if len(st.residents[t]) > 1:
                if not better and len(st.residents[t]) == 2 and _evict_lowest(st, spec, t):
                    return True
                st.move(spec, t, best)
                st.note(spec.name, f"moved from shared {t} to free {best}")
                return True
            if better:
                st.move(spec, t, best)
                st.note(spec.name, f"moved from {t} to the better {best}")
                return True
    return False


def _swap_with_lower(st: _State, movable: list[ModelSpec]) -> bool:
    """Priority: a model trades places with a strictly lower-priority model that has a
    TPU to itself when that leaves it better off: it shares a TPU (parameters not cached)
    or has a worse device (then only with an unrestricted model: one restricted to a kind
    of device keeps its device). The other model must be allowed on the TPU it gets, and
    the on-chip memory rule still holds there. Makes one trade; True if it did."""
    for spec in movable:
        mine = st.targets.get(spec.name, ())
        for here in mine[:1]:  # the first replica: extra ones never displace anyone
            crowded = len(st.residents[here]) > 1
            if crowded and _cached_together(st, here):
                continue
            fit_before = st.params[here] <= ON_CHIP_BYTES
            options = []
            for d in st.candidates(spec):
                names = st.residents[d]
                if len(names) != 1 or d in mine:
                    continue
                low = st.specs[names[0]]
                if low.priority >= spec.priority or _is_pin(low.device):
                    continue
                if here in st.targets[low.name] or not _matches(low.device, st.usable[here]):
                    continue
                if not crowded and (
                    low.device != "any" or st.score(spec, d) <= st.score(spec, here)
                ):
                    continue  # a kind-restricted model keeps its device of that kind
                load = st.params[here] - spec.param_bytes + low.param_bytes
                if crowded and fit_before and load > ON_CHIP_BYTES:
                    continue
                # the best device first, so that the model moves once: trading first
                # with the lowest priority and then onwards to a better device would
                # leave the first model it traded with moved for nothing
                score = tuple(-s for s in st.score(spec, d))
                options.append((score, low.priority, st.free_key(spec, d), d, low))
            if options:
                *_, d, low = min(options)
                st.move(spec, here, d)
                st.move(low, d, here)
                st.note(
                    low.name,
                    f"gave up {d} to {spec.name} (priority {spec.priority} > {low.priority})",
                    gave_up=d,
                )
                return True
    return False


def _restore(st: _State, movable: list[ModelSpec]) -> None:
    """Give a model back the device it ran on when the trades above left it worse off
    and that device to a model of no higher priority that never ran there.

    A trade chain can pass through a device and strand its old model: a newcomer takes
    the TPU of the lowest-priority model, then trades onwards for a better one, and a
    third model ends up on the first TPU. The model that arrived last trades places
    with the one that was there: it had lost its own device to somebody anyway, the
    stranded model is back where it ran, and nothing else changes."""
    for spec in movable:
        mine = st.targets.get(spec.name, [])
        prev = st.prev.get(spec.name, ())
        if not mine or not prev or prev[0] == mine[0]:
            continue
        here, home = mine[0], prev[0]
        if home not in st.candidates(spec) or home in mine or len(st.residents[home]) != 1:
            continue
        other = st.specs[st.residents[home][0]]
        if (
            other.priority > spec.priority
            or _is_pin(other.device)
            or home in st.prev.get(other.name, ())
            or here in st.targets[other.name]
            or not _matches(other.device, st.usable[here])
        ):
            continue
        worse = len(st.residents[here]) > 1 or st.score(spec, home) > st.score(spec, here)
        if worse and st.targets[other.name][0] == home:
            st.move(spec, here, home)
            st.move(other, home, here)
            st.note(spec.name, f"back on {home}, where it ran")


def _evict_lowest(st: _State, spec: ModelSpec, dev: str) -> bool:
    """Move the lowest-priority model sharing `dev` with `spec` to a free device of its own."""
    others = [
        st.specs[r]
        for r in st.residents[dev]
        if r != spec.name
        and not _is_pin(st.specs[r].device)
        and st.specs[r].priority < spec.priority
    ]
    for other in sorted(others, key=lambda s: (s.priority, s.name), reverse=False):
        free = st.free(other)
        if free:
            new = min(free, key=lambda d: st.free_key(other, d))
            st.move(other, dev, new)
            st.note(other.name, f"moved from shared {dev} to free {new}")
            return True
    return False


def _add_replicas(st: _State, movable: list[ModelSpec]) -> None:
    """Extra replicas only take devices nobody else needs: second replicas, then third, ..."""
    most = max((s.replicas for s in movable), default=1)
    for r in range(1, most):
        for spec in movable:
            if spec.replicas <= r or len(st.targets.get(spec.name, ())) != r:
                continue
            free = st.free(spec)
            if free:
                st.put(spec, min(free, key=lambda d: st.free_key(spec, d)))


def _bus_bytes(st: _State, bus: str) -> int:
    return sum(
        st.specs[n].io_bytes
        for d, names in st.residents.items()
        if st.usable[d].kind == "usb" and st.usable[d].bus == bus
        for n in names
    )


def _balance_buses(st: _State, movable: list[ModelSpec]) -> None:
    """When two busy accelerators must share a USB bus, the models with the fewest bytes
    per inference share it: two models placed in this run, each alone on a USB
    accelerator of the same class, trade places when that lowers the busier bus's
    bytes per inference. Nobody's class of device changes; models that ran before stay."""
    alone = [
        (s, st.targets[s.name][0])
        for s in movable
        if len(st.targets.get(s.name, ())) == 1
        and not st.prev.get(s.name)
        and len(st.residents[st.targets[s.name][0]]) == 1
        and st.usable[st.targets[s.name][0]].kind == "usb"
    ]
    for _ in range(len(alone) * len(alone)):
        for (x, dx), (y, dy) in ((a, b) for a in alone for b in alone):
            bx, by = st.usable[dx].bus, st.usable[dy].bus
            if bx == by or x.io_bytes <= y.io_bytes:
                continue
            if not (_matches(x.device, st.usable[dy]) and _matches(y.device, st.usable[dx])):
                continue
            if st.score(x, dx) != st.score(x, dy) or st.score(y, dx) != st.score(y, dy):
                continue
            before = max(_bus_bytes(st, bx), _bus_bytes(st, by))
            delta = x.io_bytes - y.io_bytes
            after = max(_bus_bytes(st, bx) - delta, _bus_bytes(st, by) + delta)
            if after < before:
                st.move(x, dx, dy)
                st.move(y, dy, dx)
                alone = [(s, dy if s is x else dx if s is y else d) for s, d in alone]
                break
        else:
            return


# ---------------------------------------------------------------- reasons


def _cpu_only(spec: ModelSpec) -> Placement:
    if not spec.edgetpu:
        why = "a CPU build (not compiled for the Edge TPU), so it runs on the CPU"
        return Placement(spec.name, (CPU,), "cpu", why)
    if spec.cpu_fallback:
        return Placement(spec.name, (CPU,), "cpu", 'device = "cpu": runs its cpu_model on the CPU')
    why = 'waiting: device = "cpu" but it has no cpu_model; set cpu_model to its CPU build'
    return Placement(spec.name, (), "waiting", why)


def _fallback(spec: ModelSpec, problem: str) -> Placement:
    if spec.cpu_fallback:
        return Placement(spec.name, (CPU,), "cpu", f"{problem}; running its cpu_model on the CPU")
    hint = "set cpu_model (with runtime.cpu_fallback = true) to run on the CPU meanwhile"
    return Placement(spec.name, (), "waiting", f"waiting: {problem}; {hint}")


def _pin_problem(spec: ModelSpec, st: _State) -> str:
    dev = st.all.get(spec.device)
    if dev is None:
        return f"pinned to {spec.device}, which is not present (check `edgetpud devices`)"
    if dev.verdict == "rejected":
        why = "; ".join(dev.reasons) or "see `edgetpud devices`"
        return f"pinned to {spec.device}, which is rejected: {why}"
    return f"pinned to {spec.device}, which is gone"


def _no_device_problem(spec: ModelSpec, st: _State) -> str:
    kind = {"pci": "PCIe ", "usb": "USB "}.get(spec.device, "")
    rejected = [d for d in st.all.values() if d.verdict == "rejected" and _matches(spec.device, d)]
    text = f"no usable {kind}Edge TPU"
    if rejected:
        text += f" ({len(rejected)} rejected: " + "; ".join(
            f"{d.identity}: {', '.join(d.reasons) or 'see `edgetpud devices`'}" for d in rejected
        )
        text += ")"
    return text


def _tpu_placement(spec: ModelSpec, st: _State) -> Placement:
    targets = tuple(st.targets[spec.name])
    others = sorted({r for t in targets for r in st.residents[t] if r != spec.name})
    shared = bool(others)
    cached = all(st.cached[t] for t in targets)
    first = st.usable[targets[0]]
    where = describe_device(first)
    if len(targets) > 1:
        where += " and " + ", ".join(targets[1:])
    parts: list[str] = []
    if spec.name in st.why:
        parts.append(st.why[spec.name])
    elif not shared:
        parts.append(_dedicated_why(spec, st, targets))
    if shared:
        parts.append(_shared_why(spec, st, targets, others))
    bus_note = _bus_why(st, targets[0])
    if bus_note:
        parts.append(bus_note)
    bad = [st.usable[t] for t in targets if st.usable[t].verdict == "degraded"]
    for dev in bad:
        why = "; ".join(dev.reasons) or "see `edgetpud devices`"
        parts.append(f"{dev.identity} is degraded ({why}) but nothing better is free")
    if st.prev and set(targets) != set(st.prev.get(spec.name, ())):
        # why it moved, less any device it gave up and got back later in the run
        parts.extend(text for lost, text in st.notes.get(spec.name, ()) if lost not in targets)
    if spec.segments > 1:
        parts.append(_pipeline_why(spec, targets))
    elif spec.replicas > len(targets) and not _is_pin(spec.device):
        parts.append(
            f"{len(targets)} of {spec.replicas} replicas: no other free Edge TPU "
            "(add a device or lower replicas)"
        )
    elif spec.replicas > 1 and _is_pin(spec.device):
        parts.append("a pinned model runs one replica")
    tier: Tier = "shared" if shared else "dedicated"
    head = f"shares {where} with {', '.join(others)}" if shared else f"dedicated {where}"
    return Placement(spec.name, targets, tier, f"{head}: {'; '.join(parts)}", cached, tuple(others))


def _unreserved(st: _State, free: list[str], demand: dict[str, int]) -> list[str]:
    """Free devices an "any" model may take without starving kind-restricted models."""
    count = {"pci": 0, "usb": 0}
    for d in free:
        count[st.usable[d].kind] += 1
    return [d for d in free if count[st.usable[d].kind] > demand[st.usable[d].kind]]


def _joins_cached(st: _State, spec: ModelSpec, dev: str) -> bool:
    """True when `spec` can join `dev` and every model there keeps its parameters cached."""
    tok = spec.caching_token
    return (
        tok is not None
        and all(st.specs[r].caching_token == tok for r in st.residents[dev])
        and st.params[dev] + spec.param_bytes <= ON_CHIP_BYTES
    )


def _cached_together(st: _State, dev: str) -> bool:
    names = st.residents[dev]
    if len(names) == 1:
        return True
    tokens = {st.specs[n].caching_token for n in names}
    return len(tokens) == 1 and None not in tokens and st.params[dev] <= ON_CHIP_BYTES


def _pipeline_why(spec: ModelSpec, targets: tuple[str, ...]) -> str:
    n = spec.segments
    if len(targets) >= n:
        return f"a pipeline of {n} segments, each on an Edge TPU of its own"
    return (
        f"a pipeline of {n} segments on {len(targets)} Edge TPU(s): no other free Edge TPU, "
        "so segments take turns on one (no reload if they were compiled together and fit "
        "the 8 MiB together, else each turn reloads parameters); add an Edge TPU to give "
        "each its own"
    )


def _bus_why(st: _State, dev: str) -> str:
    """Whom a USB accelerator shares its bus with (said only when there are several)."""
    here = st.usable[dev]
    if here.kind != "usb" or sum(1 for d in st.usable.values() if d.kind == "usb") < 2:
        return ""
    same = [d for d in st.usable.values() if d.kind == "usb" and d.bus == here.bus]
    busy = [d.identity for d in same if d.identity != dev and st.residents[d.identity]]
    if len(same) == 1:
        return f"{dev}: the only accelerator on bus {here.bus}"
    if not busy:
        return f"{dev}: the only busy accelerator on bus {here.bus}"
    kib = _bus_bytes(st, here.bus) / 1024
    return (
        f"{dev} shares bus {here.bus} with busy {', '.join(busy)} "
        f"(their models move {kib:.0f} KiB per inference each; no accelerator on a quieter "
        "bus was free)"
    )


def _dedicated_why(spec: ModelSpec, st: _State, targets: tuple[str, ...]) -> str:
    prio = f"priority {spec.priority}"
    if set(targets) <= set(st.prev.get(spec.name, ())):
        return f"{prio}; kept where it runs (no better device is free for it)"
    dev = st.usable[targets[0]]
    best = max(st.score(spec, d) for d in st.candidates(spec))
    if st.score(spec, dev.identity) >= best:
        return f"{prio}; the best kind of device there is for it"
    return f"{prio}; the best device left after higher-priority models"


def _shared_why(spec: ModelSpec, st: _State, targets: tuple[str, ...], others: list[str]) -> str:
    count = f"{st.n_placed} models on {len(st.usable)} Edge TPU(s)"
    dev = targets[0]
    if st.cached[dev]:
        return f"co-compiled with {', '.join(others)} (same caching token); parameters stay cached together"
    mib = st.params[dev] / (1024 * 1024)
    if st.params[dev] > ON_CHIP_BYTES:
        return (
            f"{count}; together {mib:.1f} MiB of parameters exceed the 8 MiB on-chip memory, "
            "so each switch reloads them; add an Edge TPU to avoid it"
        )
    return (
        f"{count}; lower-priority models share the least-loaded device, and parameters are "
        "reloaded when models alternate (co-compile them or add an Edge TPU to avoid it)"
    )


def _moves(st: _State, placements: dict[str, Placement], current: Plan | None) -> tuple[Move, ...]:
    if current is None:
        return tuple(
            Move(p.model, (), p.targets, p.reason) for p in placements.values() if p.targets
        )
    moves: list[Move] = []
    for name, p in placements.items():
        before = current.placements[name].targets if name in current.placements else ()
        if set(before) != set(p.targets):
            moves.append(Move(name, before, p.targets, p.reason))
    for name, old in current.placements.items():
        if name not in placements and old.targets:
            moves.append(Move(name, old.targets, (), "removed from the configuration"))
    return tuple(moves)
