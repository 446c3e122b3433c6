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

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.daemon import ROOT, wait_for
from tests.support.fleet import Fleet, FleetClient
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
