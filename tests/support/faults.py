"""Helpers for the fault-injection tests (tests/faults) and the soak run (bench/soak.py).

They reuse the end-to-end rig (tests/e2e/test_service.py: `Rig`, `config_text`) and add
what fault tests look at from outside the daemon: its thread count, RSS and open file
descriptors from /proc, and a rig whose broker and subscriber survive a broker SIGKILL
(broker persistence + a persistent MQTT 5 session, saved once by a clean restart).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.test_service import PREFIX, Rig
from tests.support.broker import Broker, Subscriber
from tests.support.fakelib import Control
from tests.support.umock import testbed


def threads(pid: int) -> int:
    """Threads of a process right now (/proc/<pid>/task)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def fault_rig(
    tmp: Path,
    models_dir: Path,
    fake_lib: Path,
    *,
    survive_broker_kill: bool = False,
    invoke_ms: float = 4,
) -> Iterator[Rig]:
    """A testbed, a mosquitto, a subscriber on the daemon's prefix and a fake-TPU control file.

    With `survive_broker_kill`, the subscriber's session outlives a broker SIGKILL, so every
    message the broker accepted while the subscriber reconnects still reaches it. It
    subscribes at QoS 0: a paho QoS 1 subscriber reads one packet, writes its PUBACK,
    and when that write fails on the dead broker's socket it drops what is still unread
    there (2 of 50; the daemon's own link reads them all, docs/mqtt.md), results the
    broker had already acknowledged to the daemon. At QoS 0 it writes nothing back and
    reads them all; the broker queues QoS 0 for its session while it is away.
    """
    (tmp / "state").mkdir(exist_ok=True)
    control = Control(tmp / "fake-edgetpu.control")
    # unplug aborts the device host holding the device, as libedgetpu does (#21)
    control.set(mode="simulate", invoke_ms=invoke_ms)
    broker = Broker(tmp, max_queued_messages=0, persistence=survive_broker_kill)
    with testbed() as tb, broker:
        sub = Subscriber(
            broker,
            [f"{PREFIX}/#"],
            client_id=f"fault-sub-{os.getpid()}",
            persistent=survive_broker_kill,
            qos=0 if survive_broker_kill else 1,
        ).start()
        if survive_broker_kill:
            sub._subscribed.clear()
            broker.restart()  # a clean stop saves the session; later kill()s come back to it
            if not sub._subscribed.wait(30):
                raise TimeoutError("the test subscriber did not come back after a broker restart")
        rig = Rig(tmp, tb, broker, control, models_dir, fake_lib, sub)
        try:
            yield rig
        finally:
            control.set(hang=None, fail_invoke=None)  # let any abandoned invoke return
            for d in rig.daemons:
                d.close()
            sub.stop()
