"""A fleet: several daemons share one request topic through an MQTT 5 shared subscription.

Two daemon subprocesses against one real mosquitto, each with its own simulated TPUs
(a slice of one umockdev testbed chosen by `devices.allow`, and its own fake-library
control file). What a user would check: every request sent to the fleet topic is
answered exactly once, the work follows the nodes' capacity, a full node hands its
share to the others instead of refusing it, a killed node's in-flight requests are
what a client must retry, and `edgetpud status --fleet` shows every node.
Figures (split, losses) are printed for docs/fleet.md: run with `-s` to see them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.daemon import ROOT
from tests.support.fleet import Fleet, FleetClient, Node
from tests.support.polling import wait_for
from tests.support.umock import Testbed, in_mock_environment
from tests.support.umock import testbed as umock_testbed

pytestmark = pytest.mark.e2e


@pytest.fixture
def tb() -> Iterator[Testbed]:
    if not in_mock_environment():
        pytest.skip("needs umockdev: run under umockdev-wrapper (make test does)")
    with umock_testbed() as bed:
        root = bed.add_root_hub(2, 5000, maxchild=4)
        for port in (1, 2, 3):
            bed.add_accelerator(root, port)
        yield bed


@pytest.fixture
def fleet(tmp_path: Path, tb: Testbed, models_dir: Path, fake_lib: Path) -> Iterator[Fleet]:
    with Broker(tmp_path, max_queued_messages=0) as broker:
        f = Fleet(tmp_path, broker, models_dir, fake_lib)
        try:
            yield f
        finally:
            f.close()


@pytest.fixture
def client(fleet: Fleet) -> Iterator[FleetClient]:
    c = FleetClient(fleet.broker).start()
    try:
        yield c
    finally:
        c.stop()


def serving(fleet: Fleet, client: FleetClient) -> None:
    """Wait until every node answers a fleet request (its workers and subscription are up)."""
    fleet.wait_ready()
    for node in fleet.nodes.values():
        wait_for(lambda n=node: "worker started on" in n.daemon.log(), 60, f"{node.name}'s worker")
    n = 0
    while set(client.by_node()) < set(fleet.nodes):
        client.run([f"warm{n + i}" for i in range(8)], window=8, timeout=30)
        n += 8
        assert n < 400, f"not every node answers fleet requests: {client.by_node()}"
    client.answers.clear()
    client.sends.clear()


def test_each_request_answered_once_and_split_follows_capacity(
    fleet: Fleet, client: FleetClient
) -> None:
    fleet.add("big", ["2-1", "2-2"], invoke_ms=20)
    fleet.add("small", ["2-3"], invoke_ms=20)
    serving(fleet, client)
    ids = [f"r{i}" for i in range(3000)]
    took = client.run(ids, window=40, timeout=240)
    assert set(client.answers) == set(ids), f"{len(set(ids) - set(client.answers))} unanswered"
    assert not client.duplicates(), list(client.duplicates().items())[:5]
    assert not client.errors(), list(client.errors().items())[:5]
    split = client.by_node()
    ratio = split["big"] / split["small"]
    print(f"\nsplit {split} ratio {ratio:.2f} in {took:.1f} s ({len(ids) / took:.0f}/s)")
    assert 1.4 <= ratio <= 2.8, f"2 TPUs vs 1 TPU answered {split}"
    assert client.no_subscribers == 0

    # the admin's view: one table of every node under the prefix
    out = subprocess.run(
        [sys.executable, "-m", "edgetpud", "status", "--fleet", "--config",
         str(fleet.nodes["big"].daemon.config)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name, node in fleet.nodes.items():
        assert any(line.startswith(name) and "online" in line for line in lines), out.stdout
        for port in node.ports:
            assert any(line.startswith(name) and f"usb:{port}" in line for line in lines)
        assert any(line.startswith(name) and "alpha" in line and "/s" in line for line in lines)
    totals = [line.split() for line in lines if line.startswith("alpha")]
    assert totals and totals[0][1:3] == ["2", "3"], out.stdout  # 2 nodes, 3 devices
    print(out.stdout)


def test_a_killed_node_leaves_the_rest_to_the_others(fleet: Fleet, client: FleetClient) -> None:
    big = fleet.add("big", ["2-1", "2-2"], invoke_ms=20)
    small = fleet.add("small", ["2-3"], invoke_ms=20)
    serving(fleet, client)
    ids = [f"k{i}" for i in range(1200)]
    killed: list[int] = []
    kill_time: list[float] = []

    def kill_mid_run(c: FleetClient) -> None:
        if not killed and c.answered() >= 300:
            assert big.daemon.proc is not None
            big.daemon.proc.kill()  # SIGKILL: no drain, no clean offline
            killed.append(c.answered())
            kill_time.append(time.monotonic())

    # A client that retries a request left unanswered for 5 s, deduping by correlation id.
    took = client.run(ids, window=40, timeout=240, retry_after=5.0, on_progress=kill_mid_run)
    assert killed, "the run ended before the kill"
    assert set(client.answers) == set(ids), f"{len(set(ids) - set(client.answers))} unanswered"
    assert not client.errors(), list(client.errors().items())[:5]
    retried = client.retried()
    late = [r for r in retried if client.first_sent[r] > kill_time[0] + 1.0]
    after = {r for r in ids if client.answers[r][0]["node"] == "small"}
    print(
        f"\nkilled big after {killed[0]} answers; {len(retried)} request(s) retried "
        f"(lost in flight), {len(client.duplicates())} answered twice, "
        f"{client.no_subscribers} refused by the broker; small answered {len(after)}; "
        f"{took:.1f} s; refused at {[round(t - kill_time[0], 3) for t in client.refused_at]}"
    )
    # what big held (its queue, its pipeline, its unacknowledged deliveries) is lost with
    # it and comes back only through the client's retry: never more than the window
    assert len(retried) <= 40
    assert not late, f"{len(late)} request(s) sent well after the kill went unanswered"
    # small, paused while big had room, takes the fleet topic back as soon as the broker
    # says big is gone: the broker refuses (PUBACK 16) only what was published in between,
    # and the client resends those at once
    assert all(t - kill_time[0] < 1.0 for t in client.refused_at), client.refused_at
    assert "no other node of the fleet takes its requests now" in small.daemon.log()
    assert all(client.answers[r][-1]["node"] == "small" for r in retried)
    assert big.daemon.proc is not None and big.daemon.proc.poll() is not None
    assert small.daemon.stop() == 0


def test_a_full_node_hands_its_share_to_the_others(fleet: Fleet, client: FleetClient) -> None:
    slow = fleet.add("slow", ["2-1"], invoke_ms=100, queue_size=4)
    fleet.add("fast", ["2-3"], invoke_ms=5, queue_size=1000)
    serving(fleet, client)
    ids = [f"b{i}" for i in range(600)]
    client.run(ids, window=30, timeout=180)
    assert set(client.answers) == set(ids), f"{len(set(ids) - set(client.answers))} unanswered"
    assert not client.errors(), list(client.errors().items())[:5]  # no "busy" reply
    assert not client.duplicates()
    assert client.no_subscribers == 0  # the broker never found the fleet topic unserved
    split = client.by_node()
    print(f"\nback-pressure split {split}")
    log = slow.daemon.log()
    assert re.search(r"queue full \(\d+ waiting, queue_size 4\); pausing fleet requests", log), log
    assert "taking fleet requests again" in log
    # round-robin alone would give the slow node half; its pauses send most elsewhere
    assert split.get("slow", 0) < len(ids) / 4, split


def test_a_node_left_without_a_device_hands_its_share_to_the_others(
    fleet: Fleet, client: FleetClient
) -> None:
    lost = fleet.add("lost", ["2-1"], invoke_ms=5, waiting_timeout="2s")
    fleet.add("kept", ["2-3"], invoke_ms=5)
    serving(fleet, client)
    # the admin takes lost's only accelerator away (no cpu_model: nothing to run on)
    lost.daemon.reload(lost.daemon.config.read_text().replace('allow = ["2-1"]', "allow = []"))
    wait_for(
        lambda: "no device to run on; pausing fleet requests" in lost.daemon.log(),
        60,
        "the node without a device pausing its fleet requests",
    )
    ids = [f"d{i}" for i in range(200)]
    client.run(ids, window=20, timeout=120)
    assert set(client.answers) == set(ids), f"{len(set(ids) - set(client.answers))} unanswered"
    assert not client.errors(), list(client.errors().items())[:5]  # no "no_device" reply
    assert client.by_node() == {"kept": len(ids)}, client.by_node()


def test_requests_refused_while_no_node_serves_are_resent_and_answered(
    fleet: Fleet, client: FleetClient
) -> None:
    """Nobody subscribed yet: the broker refuses each request (PUBACK 16) and the client
    resends it until a node comes up; nothing is lost, nothing answered twice."""
    started: list[Node] = []

    def start_a_node(c: FleetClient) -> None:
        if not started and c.no_subscribers >= 20:
            started.append(fleet.add("late", ["2-1"], invoke_ms=5))

    ids = [f"n{i}" for i in range(10)]
    client.run(ids, window=10, timeout=120, on_progress=start_a_node)
    assert started, "the broker never refused a request sent with no node subscribed"
    assert set(client.answers) == set(ids), f"{len(set(ids) - set(client.answers))} unanswered"
    assert not client.errors() and not client.duplicates()
    assert {r[0]["node"] for r in client.answers.values()} == {"late"}
    assert all(client.sends[r] > 1 for r in ids)  # every one was refused at least once
