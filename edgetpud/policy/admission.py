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
