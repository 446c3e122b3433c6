"""`edgetpud devices` against a umockdev testbed: verdicts, reasons and fields a user checks."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgetpud.commands import devices as devices_cmd
from tests.support.umock import Testbed, umock  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetpud", "devices", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def records(*args: str) -> dict[str, dict[str, Any]]:
    result = run_cli("--json", *args)
    assert result.returncode == 0, result.stderr
    return {r["identity"]: r for r in json.loads(result.stdout)}


def build_site(tb: Testbed) -> None:
    """Every scenario at once: the Coral docs tree, a USB 2 port with a device still in
    firmware mode, a bus-powered hub feeding two accelerators, a device the kernel could
    not configure, a port with over-current events, and three PCIe modules."""
    tb.coral_docs_tree()
    usb1 = tb.add_root_hub(1, 480)
    tb.add_accelerator(usb1, 2, state="dfu", speed=480)
    usb3 = tb.add_root_hub(3, 5000)
    bus_powered = tb.add_hub(usb3, 1, 5000, self_powered=False, max_power_ma=100)
    tb.add_accelerator(bus_powered, 1)
    tb.add_accelerator(bus_powered, 2)
    tb.add_accelerator(usb3, 2, configured=False)
    hot_port = tb.add_accelerator(usb3, 3)
    tb.set_over_current(hot_port, 2)
    tb.add_apex(0, "0000:03:00.0", temp_mc=52000)
    tb.add_apex(1, "0000:04:00.0", temp_mc=88000)
    tb.add_apex(2, "0000:05:00.0", temp_mc=-88000)


def test_json_gives_each_scenario_its_verdict_and_reasons(umock: Testbed) -> None:  # noqa: F811
    build_site(umock)
    r = records()
    assert set(r) == {
        "usb:2-3.1",
        "usb:2-3.2.1",
        "usb:2-3.2.2",
        "usb:1-2",
        "usb:3-1.1",
        "usb:3-1.2",
        "usb:3-2",
        "usb:3-3",
        "pci:0000:03:00.0",
        "pci:0000:04:00.0",
        "pci:0000:05:00.0",
    }
    assert all(d["schema"] == "edgetpud.devices/1" for d in r.values())

    good = r["usb:2-3.1"]
    assert (good["kind"], good["port"], good["bus"], good["state"]) == (
        "usb",
        "2-3.1",
        "2",
        "ready",
    )
    assert (good["vendor_product"], good["speed_mbps"], good["verdict"]) == (
        "18d1:9302",
        5000,
        "ok",
    )
    assert good["reasons"] == []
    assert good["sys_path"] == "/sys/devices/usb2/2-3/2-3.1"
    assert good["dev_node"].startswith("/dev/bus/usb/002/")
    assert good["power"] == {
        "budget_ma": 900,
        "needed_ma": 500,
        "device_max_ma": 896,
        "configured": True,
        "over_current_count": 0,
        "shared_with": [],
    }
    assert [h["port"] for h in good["hub_chain"]] == ["usb2", "2-3"]
    assert r["usb:2-3.2.1"]["verdict"] == "ok"

    secondary = r["usb:2-3.2.2"]
    assert secondary["verdict"] == "degraded"
    assert [h["internal"] for h in secondary["hub_chain"]] == [False, False, True]
    assert "port 2 of 2-3.2, a sub-hub cascaded inside hub 2-3" in secondary["reasons"][0]

    dfu = r["usb:1-2"]
    assert (dfu["state"], dfu["vendor_product"], dfu["speed_mbps"]) == ("dfu", "1a6e:089a", 480)
    assert dfu["verdict"] == "degraded" and dfu["power"]["budget_ma"] == 500
    assert "480 Mb/s (USB 2)" in dfu["reasons"][0]

    for ident, other in (("usb:3-1.1", "usb:3-1.2"), ("usb:3-1.2", "usb:3-1.1")):
        shared = r[ident]
        assert shared["power"]["budget_ma"] == 400
        assert shared["power"]["shared_with"] == [other]
        assert shared["hub_chain"][-1] == {
            "port": "3-1",
            "self_powered": False,
            "speed_mbps": 5000,
            "max_power_ma": 100,
            "internal": False,
        }
        assert shared["verdict"] == "rejected"
        assert "bus-powered hub 3-1 shares 400 mA" in shared["reasons"][0]

    refused = r["usb:3-2"]
    assert refused["verdict"] == "rejected" and refused["power"]["configured"] is False
    assert "empty bConfigurationValue" in refused["reasons"][0]

    over = r["usb:3-3"]
    assert over["power"]["over_current_count"] == 2
    assert over["verdict"] == "degraded" and "2 over-current event(s)" in over["reasons"][0]

    cool = r["pci:0000:03:00.0"]
    assert (cool["kind"], cool["bus"], cool["dev_node"], cool["verdict"]) == (
        "pci",
        "pci",
        "/dev/apex_0",
        "ok",
    )
    assert cool["vendor_product"] == "1ac1:089a"
    assert cool["thermal"] == {
        "temp_c": 52.0,
        "trip_points_c": [85.0, 90.0, 95.0],
        "throttled": False,
        "level": 0,
        "dead": False,
        "draining": False,
    }
    hot = r["pci:0000:04:00.0"]
    assert hot["thermal"]["throttled"] and hot["verdict"] == "degraded"
    assert "past its first trip point (85 °C)" in hot["reasons"][0]
    dead = r["pci:0000:05:00.0"]
    assert dead["verdict"] == "rejected" and "-88.0 °C" in dead["reasons"][0]


def test_tree_output_marks_the_problem_port(
    umock: Testbed,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    umock.coral_docs_tree()
    code = devices_cmd.main(argparse.Namespace(json=False, config=None))
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[:7] == [
        "Bus 2 (root hub usb2, 5000M): 3 accelerators share its bandwidth",
        "|__ Port 3: hub 2-3, 5000M, self-powered, 3 accelerators below",
        "    |__ Port 1: usb:2-3.1  18d1:9302  ready  5000M  900 mA (needs 500)  OK",
        "    |__ Port 2: hub 2-3.2, 5000M, self-powered, internal sub-hub, 2 accelerators below",
        "        |__ Port 1: usb:2-3.2.1  18d1:9302  ready  5000M  900 mA (needs 500)  OK",
        "        |__ Port 2: usb:2-3.2.2  18d1:9302  ready  5000M  900 mA (needs 500)  DEGRADED",
        "            ! on port 2 of 2-3.2, a sub-hub cascaded inside hub 2-3: Edge TPUs often "
        "cannot be opened on such secondary ports; move it to a port of 2-3 itself or to port 1 "
        'of the sub-hub (set devices.secondary_ports = "allow" if it works)',
    ]


def test_config_policy_and_learned_ports_apply(
    umock: Testbed,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    umock.coral_docs_tree()
    state = tmp_path / "learned"
    state.mkdir()
    (state / "learned-ports.json").write_text(
        json.dumps({"ports": {"usb:2-3.2.1": {"reason": "no Edge TPU context"}}})
    )
    cfg = tmp_path / "edgetpud.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{state}"\n[devices]\nsecondary_ports = "reject"\ndeny = ["2-3.1"]\n'
    )
    r = records("--config", str(cfg))
    assert r["usb:2-3.1"]["verdict"] == "rejected"
    assert r["usb:2-3.1"]["reasons"] == [
        'matches devices.deny pattern "2-3.1"; remove it there to use this device'
    ]
    assert r["usb:2-3.2.1"]["verdict"] == "degraded"
    assert "(no Edge TPU context)" in r["usb:2-3.2.1"]["reasons"][0]
    assert r["usb:2-3.2.2"]["verdict"] == "rejected"
    assert r["usb:2-3.2.2"]["reasons"][0].endswith('(devices.secondary_ports = "reject")')


def test_bad_config_exits_1_with_the_key(umock: Testbed, tmp_path: Path) -> None:  # noqa: F811
    cfg = tmp_path / "edgetpud.toml"
    cfg.write_text('[devices]\nsecondary_port = "reject"\n')
    result = run_cli("--config", str(cfg))
    assert result.returncode == 1
    assert "devices.secondary_port" in result.stderr
    missing = run_cli("--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_no_devices_prints_a_hint(umock: Testbed) -> None:  # noqa: F811
    result = run_cli()
    assert result.returncode == 0
    assert "No Edge TPU found" in result.stdout
    assert json.loads(run_cli("--json").stdout) == []
