"""Which devices placement may use, from what using them taught: quarantine, backoff, hangs.

A device whose sessions fail to open, or whose inferences keep failing, is
quarantined for `devices.quarantine_backoff` seconds, doubled on each repeat (at
most 2^10 times); one whose inference overran `stall_timeout` is hung until it is
replugged. Placement sees a blocked device as rejected, with the reason.
Learned bad ports (the watcher's memory) are taught only when the device itself
refused: a missing runtime or an unpreparable model fails on every port alike.
Time is passed in (`now`: time.monotonic()).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edgetpud.devices.model import DeviceInfo

CPU = "cpu"
MAX_DOUBLINGS = 10


@dataclass(frozen=True)
class Trust:
    """What the daemon has learned about one device while using it."""

    quarantined_until: float = 0.0
    quarantines: int = 0  # how many times; the backoff doubles with each
    hung: bool = False
    reason: str = ""

    def blocked(self, now: float) -> bool:
        return self.hung or now < self.quarantined_until


def quarantine(trust: Trust | None, now: float, base_backoff: float, why: str) -> Trust:
    """`trust` after one more quarantine for `why`; `reason` says for how long."""
    before = trust or Trust()
    count = before.quarantines + 1
    backoff = base_backoff * 2 ** min(count - 1, MAX_DOUBLINGS)
    return dataclasses.replace(
        before,
        quarantines=count,
        quarantined_until=now + backoff,
        reason=f"quarantined for {backoff:.0f} s: {why}",
    )


def backoff_of(trust: Trust, now: float) -> float:
    """Seconds until a quarantined device is tried again."""
    return max(0.0, trust.quarantined_until - now)


def hang(trust: Trust | None, why: str) -> Trust:
    """Hung until replugged (a replug is a new device: `on_device_change` forgets this)."""
    return dataclasses.replace(trust or Trust(), hung=True, reason=f"hung: {why}")


def quarantines_over(trust: Mapping[str, Trust], now: float) -> list[str]:
    """Devices whose quarantine has run out (hung ones stay blocked)."""
    return [
        identity
        for identity, t in trust.items()
        if t.quarantined_until and now >= t.quarantined_until and not t.hung
    ]


def release(trust: Trust) -> Trust:
    """Its quarantine is over: usable again; the count stays, so a relapse waits longer."""
    return dataclasses.replace(trust, quarantined_until=0.0, reason="")


def on_device_change(action: str) -> bool:
    """Whether a device event wipes what was learned: a replug ("added") or a removal
    starts over; a change of the same device keeps it."""
    return action in ("added", "removed")


def after_invoke_errors(
    trust: Trust | None, device: str, consecutive: int, limit: int, now: float
) -> bool:
    """Whether `consecutive` inference errors on `device` quarantine it now.

    Errors reported after the quarantine began (the worker is still stopping) must not
    quarantine it again: that would double the backoff at once. The CPU is never
    quarantined.
    """
    already = trust is not None and trust.blocked(now)
    return device != CPU and consecutive >= limit and not already


@dataclass(frozen=True)
class OpenFailure:
    """What a failed session open on a target leads to."""

    disable_model: bool  # the CPU failed: the model cannot run at all
    quarantine: bool  # the device is set aside for a while
    learn_bad_port: bool  # the port is remembered as unable to open a context


def after_open_failed(target: str, device_refused: bool) -> OpenFailure:
    if target == CPU:
        return OpenFailure(disable_model=True, quarantine=False, learn_bad_port=False)
    return OpenFailure(disable_model=False, quarantine=True, learn_bad_port=device_refused)


def planning_devices(
    devices: Iterable[DeviceInfo], trust: Mapping[str, Trust], now: float
) -> list[DeviceInfo]:
    """The devices as placement sees them: a blocked one is rejected, with why."""
    out = []
    for dev in devices:
        t = trust.get(dev.identity)
        if t is not None and t.blocked(now):
            out.append(
                dataclasses.replace(dev, verdict="rejected", reasons=(*dev.reasons, t.reason))
            )
        else:
            out.append(dev)
    return out
