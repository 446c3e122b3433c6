"""The metrics endpoint as Prometheus sees it: names, values, and promtool's lint."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgetpud.errors import ConfigError
from edgetpud.messages import Request, Result, Timing
from edgetpud.metrics import Metrics, MetricsServer
from tests.support.broker import free_port

HEALTH: dict[str, Any] = {
    "schema": "edgetpud.health/1",
    "daemon": {"version": "0.1.0", "uptime_s": 12.5, "config_generation": 2},
    "devices": [
        {
            "identity": "pci:0000:03:00.0",
            "kind": "pci",
            "port": "0000:03:00.0",
            "bus": "pci",
            "speed_mbps": 0,
            "verdict": "degraded",
            "temperature": 87.5,
            "throttle_level": 1,
            "health": {"state": "ok"},
        },
        {
            "identity": "usb:2-1",
            "kind": "usb",
            "port": "2-1",
            "bus": "2",
            "speed_mbps": 5000,
            "verdict": "ok",
            "temperature": None,
            "health": {"state": "quarantined"},
        },
    ],
    "buses": [
        {"bus": "2", "accelerators": ["usb:2-1"], "inferences_per_s": 40.0, "bytes_per_s": 6e6}
    ],
    "models": {
        "birds": {
            "state": "running",
            "tier": "dedicated",
            "devices": ["usb:2-1"],
            "queue_depth": 3,
            "dropped": 7,
        },
    },
    "hosts": {
        "usb:2-1": {
            "pid": 4242,
            "state": "running",
            "restarts": 2,
            "deaths": 2,
            "last_exit": "aborted",
            "sessions": 1,
        }
    },
    "frigate": {
        "state": "serving",
        "clients": {"frigate-1": {"answered": 9, "empty": 1, "expired": 0}},
    },
    "mqtt": {
        "connected": True,
        "backlog": 4,
        "backlog_dropped": 1,
        "published": 99,
        "requests_accepted": 50,
        "requests_rejected": {"busy": 2, "no_device": 1},
        "connects": 3,
    },
}


def result(model: str, device: str, error: str = "", invoke_ms: float = 2.6) -> Result:
    timing = None if error else Timing(0.4, 0.1, invoke_ms, 0.2)
    return Result(Request(model, b""), device, error=error, timing=timing)


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer(Metrics(), f"127.0.0.1:{free_port()}")
    srv.start()
    yield srv
    srv.close()


def scrape(srv: MetricsServer, accept: str = "") -> tuple[str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/metrics")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode(), resp.headers["Content-Type"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_results_and_health_become_prometheus_series(server: MetricsServer) -> None:
    m = server.metrics
    for _ in range(5):
        m.observe(result("birds", "usb:2-1"))
    m.observe(result("birds", "usb:2-1", error="invoke failed"))
    m.update(HEALTH)
    text, content_type = scrape(server)
    assert content_type.startswith("text/plain")
    got = samples(text)
    assert got[("edgetpud_inferences_total", (("device", "usb:2-1"), ("model", "birds")))] == 5
    assert (
        got[("edgetpud_inference_errors_total", (("device", "usb:2-1"), ("model", "birds")))] == 1
    )
    invoke = (("device", "usb:2-1"), ("model", "birds"), ("stage", "invoke"))
    assert got[("edgetpud_stage_seconds_count", invoke)] == 5
    assert got[("edgetpud_stage_seconds_sum", invoke)] == pytest.approx(5 * 0.0026)
    # 2.6 ms lands in the 3 ms bucket, not the 2 ms one
    bucket = "edgetpud_stage_seconds_bucket"
    assert got[(bucket, tuple(sorted((*invoke, ("le", "0.002")))))] == 0
    assert got[(bucket, tuple(sorted((*invoke, ("le", "0.003")))))] == 5
    assert got[("edgetpud_device_temperature_celsius", (("identity", "pci:0000:03:00.0"),))] == 87.5
    assert got[("edgetpud_device_throttle_level", (("identity", "pci:0000:03:00.0"),))] == 1
    # a USB Accelerator has no temperature: no series rather than a made-up 0
    assert ("edgetpud_device_temperature_celsius", (("identity", "usb:2-1"),)) not in got
    assert got[("edgetpud_device_usable", (("identity", "usb:2-1"),))] == 0  # quarantined
    assert got[("edgetpud_queue_depth", (("model", "birds"),))] == 3
    assert got[("edgetpud_requests_dropped_total", (("model", "birds"),))] == 7
    assert got[("edgetpud_mqtt_backlog_messages", ())] == 4
    assert got[("edgetpud_mqtt_requests_refused_total", (("reason", "busy"),))] == 2
    assert got[("edgetpud_usb_bus_bytes_per_second", (("bus", "2"),))] == 6e6
    assert got[("edgetpud_device_host_restarts_total", (("device", "usb:2-1"),))] == 2
    assert got[("edgetpud_device_host_up", (("device", "usb:2-1"),))] == 1
    frigate = (("client", "frigate-1"), ("outcome", "answered"))
    assert got[("edgetpud_frigate_requests_total", frigate)] == 9
    info = [k for k in got if k[0] == "edgetpud_device_info"]
    assert (
        "edgetpud_device_info",
        (
            ("bus", "2"),
            ("health", "quarantined"),
            ("identity", "usb:2-1"),
            ("kind", "usb"),
            ("port", "2-1"),
            ("speed_mbps", "5000"),
            ("verdict", "ok"),
        ),
    ) in info


def test_openmetrics_is_served_when_asked(server: MetricsServer) -> None:
    server.metrics.update(HEALTH)
    text, content_type = scrape(server, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_promtool_finds_nothing_to_complain_about(server: MetricsServer) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (make installs it)"
    server.metrics.observe(result("birds", "usb:2-1"))
    server.metrics.observe(result("birds", "usb:2-1", error="x"))
    server.metrics.update(HEALTH)
    text, _ = scrape(server)
    done = subprocess.run(
        [promtool, "check", "metrics"],
        check=False,
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )


def test_a_port_in_use_is_a_config_error_naming_the_key(server: MetricsServer) -> None:
    with pytest.raises(ConfigError) as err:
        MetricsServer(Metrics(), f"127.0.0.1:{server.port}")
    assert "metrics.listen: cannot listen on 127.0.0.1:" in str(err.value)


def test_close_is_idempotent_and_frees_the_port() -> None:
    port = free_port()
    srv = MetricsServer(Metrics(), f"127.0.0.1:{port}")
    srv.start()
    srv.close()
    srv.close()
    again = MetricsServer(Metrics(), f"127.0.0.1:{port}")
    again.close()


def test_a_section_of_an_unexpected_shape_costs_only_its_own_series(server: MetricsServer) -> None:
    server.metrics.observe(result("birds", "usb:2-1"))
    server.metrics.update({**HEALTH, "hosts": ["not", "a", "mapping"]})
    got = samples(scrape(server)[0])
    assert not [k for k in got if k[0].startswith("edgetpud_device_host")]
    assert got[("edgetpud_queue_depth", (("model", "birds"),))] == 3
    assert got[("edgetpud_inferences_total", (("device", "usb:2-1"), ("model", "birds")))] == 1
