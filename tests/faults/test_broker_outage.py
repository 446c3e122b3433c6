"""The broker killed and restarted repeatedly while the daemon is busy.

Requests are queued before each kill, so workers keep producing results while the
broker is gone: they wait in the daemon's backlog and arrive after the restart. With a
small `mqtt.backlog_limit`, what is lost is exactly what health's `backlog_dropped` says.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.test_service import BASE, Rig, config_text, usb_root
from tests.support.daemon import Daemon
from tests.support.faults import fault_rig
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

ONE_MODEL = """
[models.alpha]
model = "{m}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
queue_size = 1000
"""


def online_count(rig: Rig) -> int:
    """The daemon's connects the subscriber has seen: each "online" it got live, not the
    retained copy a re-subscribe after a broker restart brings too. (Counting those
    as well once let a round think the daemon was back before the subscriber was.)"""
    return sum(1 for m in rig.sub.on(f"{BASE}/status") if m.payload == b"online" and not m.retain)


def outage(rig: Rig, ids: list[str], seconds: float) -> None:
    """Queue `ids`, kill the broker once results flow, bring it back after `seconds`."""
    onlines = online_count(rig)
    before = len(rig.answered("alpha"))
    accepted = rig.health().get("mqtt", {}).get("requests_accepted", 0)
    rig.send("alpha", ids, burst=True)  # queued together: a slow sender under load let
    # the queue drain before the kill, and a 25-message backlog then never overflowed
    # a request the broker has acked but not yet handed to the daemon dies with the broker:
    # that loss is the broker's, so kill only once the daemon has taken them all
    wait_for(
        lambda: rig.health()["mqtt"]["requests_accepted"] >= accepted + len(ids),
        60,
        "the daemon to take every request",
    )
    wait_for(lambda: len(rig.answered("alpha")) > before + 5, 60, "results before the kill")
    rig.broker.kill()
    time.sleep(seconds)  # the workers keep producing into the backlog meanwhile
    rig.broker.start()
    wait_for(lambda: online_count(rig) > onlines, 90, "the daemon back online after the restart")


def lost_report(rig: Rig, d: Daemon, sent: list[str]) -> str:
    """What a failed wait saw: which results are missing, the daemon's last word, the logs."""
    missing = sorted(set(sent) - set(rig.answered("alpha")))
    h = rig.health()
    proc = rig.broker.proc
    broker = "running" if rig.broker.running else f"exited ({proc and proc.returncode})"
    return (
        f"{len(missing)} of {len(sent)} missing: {missing[:20]}\n"
        f"broker {broker}; test subscriber connected: {rig.sub.client.is_connected()}\n"
        f"last health: mqtt {h.get('mqtt')} alpha {h.get('models', {}).get('alpha')}\n"
        f"daemon log (tail):\n{d.log()[-4000:]}\nbroker log (tail):\n{rig.broker.log()[-3000:]}"
    )


@pytest.mark.timeout(240)
def test_every_result_arrives_across_repeated_broker_kills(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    with fault_rig(tmp_path, models_dir, fake_lib, survive_broker_kill=True, invoke_ms=25) as rig:
        rig.tb.add_accelerator(usb_root(rig.tb), 1)
        d = rig.daemon(models=ONE_MODEL)
        d.wait_ready()
        wait_for(lambda: online_count(rig) >= 1, 30, "the daemon online")
        sent: list[str] = []
        for round_ in range(3):
            ids = [f"k{round_}-{i}" for i in range(150)]
            sent += ids
            outage(rig, ids, seconds=2.0)
        try:
            wait_for(lambda: len(rig.answered("alpha")) >= len(sent), 120, "every result")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{lost_report(rig, d, sent)}") from None
        answered = rig.answered("alpha")
        assert set(answered) == set(sent), f"{len(set(sent) - set(answered))} results lost"
        assert not [r for r in answered.values() if "error" in r]
        health = wait_for(lambda: rig.health().get("mqtt"), 30, "health after the outages")
        assert health["backlog_dropped"] == 0
        assert d.stop() == 0


@pytest.mark.timeout(180)
def test_beyond_the_backlog_limit_the_drop_count_is_exact(
    tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    # 60 ms an invoke: at 30 ms, the 1 s health that says every request was taken could
    # come when 279 of 300 were answered already, leaving too few to overflow the backlog
    with fault_rig(tmp_path, models_dir, fake_lib, survive_broker_kill=True, invoke_ms=60) as rig:
        rig.tb.add_accelerator(usb_root(rig.tb), 1)
        text = config_text(
            tmp_path, rig.broker.port, models_dir, fake_lib, models=ONE_MODEL
        ).replace("[runtime]", "backlog_limit = 25\n[runtime]")
        d = Daemon(tmp_path / "daemon", text, env=rig.control.env())
        rig.daemons.append(d)
        d.start().wait_ready()
        wait_for(lambda: online_count(rig) >= 1, 30, "the daemon online")
        ids = [f"b{i}" for i in range(300)]
        outage(rig, ids, seconds=12.0)  # 300 x 60 ms: the queue drains while the broker is away

        def settled() -> dict[str, int] | None:
            h = rig.health()
            m = h.get("models", {}).get("alpha", {})
            if m.get("results", 0) + m.get("errors", 0) < len(ids) or h["mqtt"]["backlog"]:
                return None
            return {"dropped": h["mqtt"]["backlog_dropped"], "results": m["results"]}

        try:
            counters = wait_for(settled, 90, "every request processed and the backlog drained")
        except AssertionError as exc:
            h = rig.health()
            raise AssertionError(f"{exc}: last health {h.get('mqtt')} {h.get('models')}") from None
        answered = set(rig.answered("alpha"))
        lost = set(ids) - answered
        assert lost, "the outage should have overflowed a 25-message backlog"
        assert counters["results"] == len(ids)
        assert counters["dropped"] == len(lost), (counters, len(lost))
        assert d.stop() == 0
