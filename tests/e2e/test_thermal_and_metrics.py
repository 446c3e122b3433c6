"""A PCIe module heating up and cooling down, and the daemon watched by a real Prometheus.

The daemon runs as a subprocess under umockdev with the fake libedgetpu; the test
moves the apex module's `temp` attribute as the driver would and reads what a user
reads: the events topic, the retained health, and the /metrics endpoint (through
Debian's prometheus, scraping every second, queried over its HTTP API).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_service import Rig, rig, usb_root  # noqa: F401 - fixture
from tests.support.broker import free_port
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

APEX = "pci:0000:03:00.0"
ONE_MODEL = """
[models.alpha]
model = "{m}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
cpu_model = "{m}/mobilenet_v1_0.25_128_quant.tflite"
labels = "{m}/imagenet_labels.txt"
priority = 90
queue_size = 1000
[models.alpha.postprocess]
type = "classify"
top_k = 1
"""
POLL = 1.0  # devices.thermal_interval in these tests


def extra(port: int) -> str:
    return f'thermal_interval = "{POLL}s"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def device(r: Rig, identity: str) -> dict[str, Any]:
    return next((d for d in r.health().get("devices", []) if d["identity"] == identity), {})


def test_a_module_is_throttled_drained_readmitted_and_found_dead(rig: Rig) -> None:  # noqa: F811
    """80 → 87 → 96 → 40 → -88 °C on the module serving alpha: each level reaches the
    events, health and /metrics; at 96 °C alpha leaves the module before the driver
    shuts it down; at 40 °C the module is usable again; -88 °C is a dead module."""
    apex = rig.tb.add_apex(0, "0000:03:00.0", temp_mc=45000)
    rig.tb.add_accelerator(usb_root(rig.tb), 1)
    port = free_port()
    d = rig.daemon(models=ONE_MODEL, extra=extra(port))
    d.wait_ready()
    wait_for(lambda: rig.placement("alpha") == [APEX], 30, "alpha on the PCIe module")

    def level_everywhere(temp_c: float, level: int, verdict: str) -> bool:
        dev = device(rig, APEX)
        got = scrape(port)
        ident = (("identity", APEX),)
        return (
            dev.get("temperature") == temp_c
            and dev.get("throttle_level") == level
            and dev.get("verdict") == verdict
            and got.get(("edgetpud_device_temperature_celsius", ident)) == temp_c
            and got.get(("edgetpud_device_throttle_level", ident)) == level
        )

    took: dict[float, float] = {}
    for temp_mc, level, verdict in [
        (80000, 0, "ok"),
        (87000, 1, "degraded"),
        (96000, 3, "rejected"),
        (40000, 0, "ok"),
    ]:
        rig.tb.set_attribute(apex, "temp", str(temp_mc))
        start = time.monotonic()
        wait_for(
            lambda t=temp_mc / 1000, lv=level, v=verdict: level_everywhere(t, lv, v),
            30,
            f"{temp_mc / 1000} °C, level {level}, {verdict} in health and metrics\n"
            f"{device(rig, APEX)}",
        )
        took[temp_mc / 1000] = time.monotonic() - start
        if temp_mc == 96000:
            wait_for(lambda: rig.placement("alpha") == ["usb:2-1"], 30, "alpha moved off")
            assert device(rig, APEX)["thermal_state"] == "draining"
    print("seconds from the sysfs write to health and metrics:", took)

    crossings = [(e["from_level"], e["level"], e["state"]) for e in rig.events("device_thermal")]
    assert crossings == [(0, 1, "throttled"), (1, 3, "draining"), (3, 0, "ok")], crossings
    drained = next(e for e in rig.events("device_changed") if e["verdict"] == "rejected")
    assert "past its last trip point (95 °C)" in drained["reasons"][0]
    # readings that cross no trip point are health updates, not events or re-plans
    before = len(rig.events("device_changed"))
    for temp_mc in (41000, 42000, 43000):
        rig.tb.set_attribute(apex, "temp", str(temp_mc))
        wait_for(lambda t=temp_mc / 1000: device(rig, APEX).get("temperature") == t, 30, "reading")
    assert len(rig.events("device_changed")) == before

    rig.tb.set_attribute(apex, "temp", "-88000")
    wait_for(lambda: device(rig, APEX).get("thermal_state") == "dead", 30, "a dead module")
    assert device(rig, APEX)["verdict"] == "rejected"
    assert scrape(port)[("edgetpud_device_usable", (("identity", APEX),))] == 0
    assert rig.events("device_thermal")[-1]["state"] == "dead"
    assert d.stop() == 0


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Debian's prometheus on a loopback port; yields (its port, its config path)."""
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs: []\n")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        yield port, cfg
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_sees_what_health_says(
    rig: Rig,  # noqa: F811
    prometheus: tuple[int, Path],
) -> None:
    prom_port, prom_cfg = prometheus
    rig.tb.add_apex(0, "0000:03:00.0", temp_mc=52000)
    port = free_port()
    d = rig.daemon(models=ONE_MODEL, extra=extra(port))
    d.wait_ready()
    wait_for(lambda: rig.placement("alpha") == [APEX], 30, "alpha on the PCIe module")
    prom_cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
        f"  - job_name: edgetpud\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    wait_for(lambda: _reload(prom_port), 60, "prometheus to take its config")

    # steady load: 40 requests a second for 15 s
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < 15:
        rig.send("alpha", [f"r{sent + i}" for i in range(4)])
        sent += 4
        time.sleep(0.1)
    health = rig.health()
    alpha = health["models"]["alpha"]
    rate = query(prom_port, 'sum(rate(edgetpud_inferences_total{model="alpha"}[5s]))')
    p50 = query(
        prom_port,
        "histogram_quantile(0.5, sum by (le) "
        '(rate(edgetpud_stage_seconds_bucket{model="alpha",stage="invoke"}[10s])))',
    )
    temp = query(prom_port, f'edgetpud_device_temperature_celsius{{identity="{APEX}"}}')
    wait_for(lambda: len(rig.answered("alpha")) >= sent, 60, "every request answered")

    prom_rate = float(rate[0]["value"][1])
    prom_p50_ms = float(p50[0]["value"][1]) * 1000
    print(f"rate: health {alpha['rate']}/s, prometheus {prom_rate:.1f}/s; p50: health "
          f"{alpha['p50_ms']} ms (whole service), prometheus invoke {prom_p50_ms:.2f} ms")  # fmt: skip
    assert prom_rate == pytest.approx(alpha["rate"], rel=0.25)
    # health's p50 covers preprocess + invoke + postprocess (a few tenths of a ms more
    # on an idle machine, more on a loaded one); the invoke histogram's p50 is
    # interpolated in 1 ms buckets
    assert abs(prom_p50_ms - alpha["p50_ms"]) <= max(2.0, 0.25 * alpha["p50_ms"])
    assert float(temp[0]["value"][1]) == device(rig, APEX)["temperature"] == 52.0
    assert d.stop() == 0


def _reload(port: int) -> bool:
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/-/reload", method="POST")
        urllib.request.urlopen(req, timeout=5).close()
        up = query(port, 'up{job="edgetpud"}')
    except OSError:
        return False
    return bool(up) and up[0]["value"][1] == "1"
