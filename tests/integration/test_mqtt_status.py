"""`edgetpud status` reads the retained health of one node, or of the fleet."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgetpud import cli
from edgetpud.config import MqttConfig
from edgetpud.mqtt import MqttLink
from tests.support.broker import Broker
from tests.support.polling import wait_for

HEALTH: dict[str, Any] = {
    "daemon": {"version": "0.1.0", "uptime_s": 3725, "config_generation": 2},
    "devices": [
        {"identity": "usb:2-1.3", "kind": "usb", "speed": "5000M", "verdict": "ok", "state": "serving",
         "temperature": None, "models": ["birds"], "reasons": []},
    ],
    "models": {"birds": {"state": "running", "placement": "usb:2-1.3", "rate": 41.5, "p50_ms": 3.2,
                         "p99_ms": 7.9, "queue_depth": 0, "dropped": 0, "errors": 1}},
}  # fmt: skip


def write_config(tmp_path: Path, broker: Broker, node: str) -> Path:
    path = tmp_path / f"{node}.toml"
    path.write_text(
        f'[daemon]\nnode_id = "{node}"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
    )
    return path


def run_link(broker: Broker, node: str, health: dict[str, Any] = HEALTH) -> MqttLink:
    link = MqttLink(
        replace(MqttConfig(), host=broker.host, port=broker.port), node, on_request=lambda r: None
    )
    link.start()
    wait_for(lambda: link.stats().connected, what="connect")
    link.publish_health(health)
    # "online" and the health acknowledged by the broker: both retained there now
    wait_for(lambda: link.stats().published >= 2, what="the broker to take the health")
    return link


def status_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], health: dict[str, Any]
) -> tuple[int, str]:
    """`edgetpud status` for node box1 whose link published `health`: exit code, stdout."""
    with Broker(tmp_path) as broker:
        link = run_link(broker, "box1", health)
        try:
            code = cli.main(["status", "--config", str(write_config(tmp_path, broker, "box1"))])
        finally:
            link.stop()
    return code, capsys.readouterr().out


def test_status_prints_the_retained_health(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = status_of(tmp_path, capsys, HEALTH)
    assert code == 0
    assert "box1" in out and "online" in out
    assert "usb:2-1.3" in out and "serving" in out
    assert "birds" in out and "41.5/s" in out and "7.9 ms" in out
    assert "62m" in out  # uptime


def test_status_says_why_a_model_is_not_running_and_what_a_reload_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = "/etc/edgetpud/edgetpud.toml"
    refused = (
        f"{config}: 2 problem(s) in the configuration:\n"
        '  mqtt.hots: unknown key (did you mean "host"?)\n'
        "  models.owls.priority: must be an integer from 0 to 100, got -1"
    )
    models = {
        **HEALTH["models"],
        "cats": {"state": "disabled", "tier": "disabled", "devices": [],
                 "reason": "model file /m/cats.tflite does not exist: check the path"},
        "owls": {"state": "waiting", "tier": "waiting", "devices": [],
                 "reason": "waiting: no usable PCIe Edge TPU; set cpu_model (with "
                           "runtime.cpu_fallback = true) to run on the CPU meanwhile"},
    }  # fmt: skip
    daemon = {**HEALTH["daemon"], "config": config, "last_reload_error": refused}
    code, out = status_of(tmp_path, capsys, {**HEALTH, "daemon": daemon, "models": models})
    assert code == 0
    lines = out.splitlines()
    assert lines[1].endswith(
        '2 problems, first: mqtt.hots: unknown key (did you mean "host"?); '
        f"run edgetpud check-config {config}"
    )
    assert "models.owls.priority" not in out  # one line: the first problem only
    header = next(line for line in lines if line.startswith("NODE  MODEL"))
    rows = {line.split()[1]: line for line in lines if line.startswith("box1  ")}
    column = header.index("REASON")
    assert rows["cats"][column:] == "model file /m/cats.tflite does not exist: check the path"
    assert rows["owls"][column:].startswith("no usable PCIe Edge TPU; set cpu_model")
    assert rows["owls"].endswith("…")  # cut to fit, with a note saying where it is whole
    assert any(line.startswith("(a REASON ending in … is cut") for line in lines)
    assert "41.5/s" in rows["birds"] and len(rows["birds"]) < column


def test_status_fleet_shows_every_node_and_who_is_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Broker(tmp_path) as broker:
        a, b = run_link(broker, "node-a"), run_link(broker, "node-b")
        b.stop()
        try:
            config = write_config(tmp_path, broker, "node-a")
            code = cli.main(["status", "--fleet", "--config", str(config)])
        finally:
            a.stop()
    out = capsys.readouterr().out
    assert code == 1  # node-b is offline
    rows = {line.split()[0]: line for line in out.splitlines()[1:3]}
    assert "online" in rows["node-a"]
    assert "offline" in rows["node-b"]


def test_status_without_a_broker_says_what_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Broker(tmp_path)  # never started: nothing listens on its port
    code = cli.main(
        ["status", "--timeout", "2", "--config", str(write_config(tmp_path, broker, "x"))]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach the MQTT broker" in err
    assert f"nothing listens on 127.0.0.1:{broker.port}" in err and "start the broker" in err


def test_status_with_a_wrong_password_names_the_refusal_and_the_password_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "password"
    secret.write_text("wrong\n")
    secret.chmod(0o600)
    with Broker(tmp_path, users={"edge": "right"}) as broker:
        path = write_config(tmp_path, broker, "x")
        path.write_text(path.read_text() + f'username = "edge"\npassword_file = "{secret}"\n')
        code = cli.main(["status", "--timeout", "5", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "refused the connection (" in err and "code " in err, err
    assert "mqtt.password_file" in err, err
