"""Fleet back-pressure: a full model, or one without a device, stops taking fleet requests.

The broker then hands the shared subscription's messages to nodes with room,
instead of this node refusing or dropping them. The link refuses to pause while
no other online node of the group takes the model's requests (the broker would
discard them): then this node keeps taking them, queued over the limit (or
answered no_device).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from edgetpud.daemon.ports import Link
from edgetpud.daemon.state import ModelRuntime
from edgetpud.policy import admission

log = logging.getLogger(__name__)


class FleetBackpressure:
    """Pauses and resumes the link's fleet subscriptions; one per link."""

    def __init__(self) -> None:
        self._held: set[str] = set()  # full, but the last node taking fleet requests

    def reset(self) -> None:
        """A new link: nothing is paused on it."""
        self._held.clear()

    def step(self, models: Iterable[ModelRuntime], link: Link) -> None:
        for rt in models:
            name = rt.name
            depth, limit = rt.queue.depth, rt.queue.maxsize
            paused = link.fleet_paused(name)
            why = (
                "no device to run on"
                if rt.no_device
                else f"queue full ({depth} waiting, queue_size {limit})"
            )
            step = admission.fleet_step(
                depth=depth, limit=limit, no_device=bool(rt.no_device), paused=paused
            )
            if step == "pause":
                if link.pause_fleet(name):
                    self._held.discard(name)
                    log.info("model %s: %s; pausing fleet requests", name, why)
                elif name not in self._held:  # "held": say it once per spell
                    self._held.add(name)
                    log.info(
                        "model %s: %s but no other node of the fleet takes its requests now; "
                        "keeping fleet requests",
                        name,
                        why,
                    )
            elif step == "resume":
                link.resume_fleet(name)
                log.info(
                    "model %s: can take requests (%d queued); taking fleet requests again",
                    name,
                    depth,
                )
            if depth < limit and not rt.no_device:
                self._held.discard(name)
