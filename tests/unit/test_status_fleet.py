"""`edgetpud status --fleet` tables from health snapshots as the daemon publishes them."""

from __future__ import annotations

from typing import Any

from edgetpud.commands.status import render


def health(rate: float, devices: list[str], queue: int = 0) -> dict[str, Any]:
    """The shape edgetpud/health.py publishes (docs/mqtt.md, "edgetpud.health/1")."""
    return {
        "time": 1000.0,
        "daemon": {"version": "0.1.0", "uptime_s": 30, "config_generation": 1},
        "devices": [
            {"identity": d, "kind": "usb", "speed_mbps": 5000, "verdict": "ok",
             "state": "ready", "temperature": 41.0, "models": ["birds"], "reasons": []}
            for d in devices
        ],
        "models": {
            "birds": {"state": "running", "tier": "dedicated", "devices": devices,
                      "rate": rate, "p50_ms": 3.2, "p99_ms": 7.9,
                      "queue_depth": queue, "dropped": 0, "results": 100, "errors": 1},
        },
    }  # fmt: skip


def rows(text: str, first: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.startswith(first)]


def test_model_rows_show_rate_latency_and_placement_from_the_daemons_keys() -> None:
    out = render({"box1": health(41.5, ["usb:2-1", "usb:2-2"])}, {"box1": "online"}, now=1001.0)
    assert "41.5/s" in out and "3.2 ms" in out and "7.9 ms" in out
    assert "usb:2-1, usb:2-2" in out
    assert "5000M" in out and "41.0°C" in out
    assert "FLEET MODEL" not in out  # only with --fleet


def test_fleet_row_sums_the_online_nodes_only() -> None:
    nodes = {
        "a": health(40.0, ["usb:2-1", "usb:2-2"], queue=3),
        "b": health(20.0, ["usb:2-3"], queue=1),
        "c": health(99.0, ["usb:2-4"], queue=50),  # its last health before it died
    }
    online = {"a": "online", "b": "online", "c": "offline"}
    out = render(nodes, online, now=1001.0, fleet=True)
    assert rows(out, "birds") == [["birds", "2", "3", "60.0/s", "4", "200", "2"]]
