"""Whether a request for a model is taken, and what the client is told if not.

The supervisor publishes one `Door` per configured model (an immutable table);
the thread a request arrives on (paho's, a component's) asks `decide` and then
only enqueues. Nothing here touches a queue: `Verdict.queue` says how to put it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Door:
    """What admission knows of one model at the last change the supervisor published."""

    disabled: str = ""  # why it cannot run at all ("" = it can)
    no_device: str = ""  # set once it waited daemon.waiting_timeout without a device
    queue_size: int = 1  # models.<name>.queue_size


@dataclass(frozen=True)
class Verdict:
    """`refusal` is what the client is told ("" = taken); `queue` how to enqueue a taken one:
    "put" waits for no room (a full queue is `busy`), "over_limit" is kept whatever the depth."""

    refusal: str = ""
    queue: Literal["put", "over_limit", ""] = ""


FLEET_SOURCE = (
    "mqtt-fleet"  # Request.source of a request taken from the fleet's shared subscription
)


def decide(model: str, door: Door | None, source: str) -> Verdict:
    """Take the request for `model` (arriving from `source`) or say why not."""
    if door is None:
        return Verdict(f'unknown model "{model}"')
    if door.disabled:
        return Verdict(f"model {model} is disabled: {door.disabled}")
    if door.no_device:
        return Verdict(door.no_device)
    if source == FLEET_SOURCE:
        # The broker already gave this one to us: keep it (over the limit, behind the
        # others) rather than refuse or drop it; the supervisor pauses our fleet
        # subscription so the next go elsewhere.
        return Verdict(queue="over_limit")
    return Verdict(queue="put")


def busy(model: str, door: Door, retry_after_ms: int | None = None) -> str:
    """The refusal of a request whose model's queue had no room; with the queue's drain
    estimate, it says when to retry (the MQTT reply also carries it as retry_after_ms)."""
    when = f"retry in {retry_after_ms} ms" if retry_after_ms is not None else "retry later"
    return f"busy: the queue of model {model} is full ({door.queue_size} waiting); {when}"


@dataclass(frozen=True)
class Waiting:
    """A model's wait for a device, after one supervisor turn."""

    since: float  # time.monotonic() it lost its last worker; 0.0 = not waiting
    no_device: str  # the refusal once it waited too long ("" = still taking requests)
    change: Literal["", "runs_again", "gave_up"] = ""  # what to log and answer now


def waiting(
    model: str,
    *,
    has_workers: bool,
    disabled: bool,
    mqtt_fed: bool,
    since: float,
    no_device: str,
    now: float,
    limit: float,
    why: str,
) -> Waiting:
    """MQTT clients of a model with no device get an answer after `limit` seconds
    (daemon.waiting_timeout; 0 = wait for ever).

    Until then requests queue, so an accelerator replugged within the timeout serves
    them; after it, queued MQTT requests are answered `no_device` and new ones refused
    at once. Other sources hold back by themselves and keep waiting. `why` is the
    placement's reason for not placing it.
    """
    if has_workers or disabled or not mqtt_fed:
        return Waiting(0.0, "", "runs_again" if no_device else "")
    since = since or now
    if not limit or no_device or now - since < limit:
        return Waiting(since, no_device)
    refusal = (
        f"no_device: model {model} has had no device to run on for {limit:g} s "
        f"({why.removeprefix('waiting: ')}); retry when the node's health topic "
        "shows it running"
    )
    return Waiting(since, refusal, "gave_up")


def fleet_step(
    *, depth: int, limit: int, no_device: bool, paused: bool
) -> Literal["", "pause", "resume"]:
    """Whether this node stops or starts taking a model's fleet requests.

    A full model (`depth` ≥ queue_size `limit`), or one without a device, pauses its
    shared subscription so the broker hands requests to nodes with room; it resumes
    once the queue is down to half.
    """
    if not paused and (depth >= limit or no_device):
        return "pause"
    if paused and not no_device and depth <= limit // 2:
        return "resume"
    return ""
