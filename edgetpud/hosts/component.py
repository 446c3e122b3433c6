"""The host pool as a daemon component: its health section, and closing it at the end.

The supervisor stops components after the workers have drained and stopped, so by the
time `stop` closes the pool no session is in use; each host then closes its
interpreters (releasing its device) and exits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgetpud.hosts.pool import HostPool


class HostsComponent:
    """`ports.Component` over a HostPool: health key `hosts`, one entry per device."""

    name = "hosts"

    def __init__(self, pool: HostPool) -> None:
        self.pool = pool

    def start(self) -> None:
        """Nothing to start: a host starts when the first session on its device opens."""

    def apply_config(self, cfg: Any) -> None:
        """Nothing to take: each session carries its runtime settings when it opens."""

    def health(self) -> Mapping[str, Any] | None:
        """{device: {pid, state, restarts, deaths, last_exit, sessions}} for every device
        that has had a host."""
        return {
            h.device: {
                "pid": h.pid,
                "state": h.state,
                "restarts": h.restarts,
                "deaths": h.deaths,
                "last_exit": h.last_exit,
                "sessions": h.sessions,
            }
            for h in self.pool.snapshot()
        }

    def stop(self, deadline: float) -> None:
        self.pool.close()
