"""`edgetpud status` shows the Frigate endpoint's section of the health snapshot."""

from __future__ import annotations

from typing import Any

from edgetpud.commands.status import render


def health(frigate: dict[str, Any] | None) -> dict[str, Any]:
    h: dict[str, Any] = {
        "time": 1000.0,
        "daemon": {"version": "0.1.0", "uptime_s": 30, "config_generation": 1},
        "models": {},
    }
    if frigate is not None:
        h["frigate"] = frigate
    return h


FRIGATE = {
    "state": "listening",
    "error": "",
    "endpoint": "ipc:///run/edgetpud/frigate.sock",
    "model": "doorcam",
    "request_timeout_ms": 200.0,
    "unavailable": "model doorcam has no device to run on",
    "requests": 12,
    "answered": 7,
    "empty": 4,
    "expired": 1,
    "mismatched": 0,
    "malformed": 0,
    "clients": {
        "pid 4242 (uid 0)": {
            "connections": 2, "requests": 12, "answered": 7, "empty": 4, "expired": 1,
            "mismatched": 0, "detector_model": "ssd.tflite",
            "last_empty": "model doorcam has no device to run on",
            "first_seen": 900.0, "last_seen": 995.0,
        }
    },
}  # fmt: skip


def test_frigate_totals_and_each_client_get_a_row() -> None:
    out = render({"box1": health(FRIGATE)}, {"box1": "online"}, now=1001.0)
    lines = [line for line in out.splitlines() if line.startswith("box1 ")]
    total = next(line for line in lines if "(all) ipc:///run/edgetpud/frigate.sock" in line)
    assert total.split()[3:9] == ["listening", "doorcam", "12", "7", "4", "1"]
    assert "no device to run on" in total
    client = next(line for line in lines if "pid 4242 (uid 0)" in line)
    assert "ssd.tflite" in client and "no device to run on" in client
    assert "FRIGATE CLIENT" in out


def test_no_frigate_table_when_the_endpoint_is_off() -> None:
    assert "FRIGATE" not in render({"box1": health(None)}, {"box1": "online"}, now=1001.0)
