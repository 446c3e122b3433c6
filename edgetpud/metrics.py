"""Prometheus / OpenMetrics endpoint (`[metrics] listen`): the only prometheus_client importer.

Two kinds of figures, kept apart so a scrape never waits on the hot path:

- **Per result** (counters and stage histograms): `Metrics.observe(result)` runs on
  the worker thread that finished the request. It touches only prometheus_client's
  own per-series locks, never a daemon lock.
- **Per snapshot** (gauges, info, counters the daemon already keeps): the supervisor
  hands every health snapshot it renders to `Metrics.update()`, which swaps one
  reference. A scrape renders the last snapshot it finds; it takes no daemon lock
  and calls nothing in the daemon.

Names follow Prometheus conventions: one prefix `edgetpud_`, base units (seconds,
bytes, Celsius), `_total` for counters, `_info` for metadata. docs/metrics.md lists
every metric; `promtool check metrics` reports nothing (tests/integration/test_metrics.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from edgetpud.config import Config, parse_listen
from edgetpud.errors import ConfigError, ConfigIssue
from edgetpud.messages import Result

log = logging.getLogger(__name__)

PREFIX = "edgetpud"
STAGES = ("queue", "preprocess", "invoke", "postprocess")
# Seconds: an Edge TPU invoke takes 2-10 ms (USB 3: MobileNet v2 2.6 ms, SSD 7.2 ms; USB 2
# 2-4x that), so the buckets are 1 ms apart there; a CPU fallback 5-500 ms; a queue up to s.
BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.010, 0.015, 0.020, 0.030,
    0.050, 0.075, 0.100, 0.250, 0.500, 1.0, 2.5, 5.0,
)  # fmt: skip


class Metrics:
    """The daemon's metrics: fed by `observe()` and `update()`, read by the HTTP server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._stage = Histogram(
            f"{PREFIX}_stage_seconds",
            "Time one request spent in each stage: queue, preprocess, invoke, postprocess.",
            ["model", "device", "stage"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._inferences = Counter(
            f"{PREFIX}_inferences",
            "Requests answered with a result.",
            ["model", "device"],
            registry=self.registry,
        )
        self._errors = Counter(
            f"{PREFIX}_inference_errors",
            "Requests answered with an error (invoke failed, bad input, model removed...).",
            ["model", "device"],
            registry=self.registry,
        )
        self._snapshot: Mapping[str, Any] = {}
        # (model, device) -> its series, looked up once: labels() costs a lock and a tuple
        self._series: dict[tuple[str, str], tuple[Any, Any, tuple[Any, ...]]] = {}
        self.registry.register(_SnapshotCollector(self))

    def observe(self, result: Result) -> None:
        """Count one answered request and its stage times (worker thread; never raises)."""
        try:
            key = (result.request.model, result.device or "none")
            series = self._series.get(key)
            if series is None:
                series = self._series.setdefault(key, self._new_series(*key))
            done, failed, stages = series
            if result.error:
                failed.inc()
                return
            done.inc()
            t = result.timing
            if t is not None:
                for hist, ms in zip(
                    stages, (t.queue_ms, t.preprocess_ms, t.invoke_ms, t.postprocess_ms)
                ):
                    hist.observe(max(ms, 0.0) / 1000.0)
        except Exception:  # metrics must never cost a request its answer
            log.exception("metrics: could not record a result")

    def _new_series(self, model: str, device: str) -> tuple[Any, Any, tuple[Any, ...]]:
        return (
            self._inferences.labels(model, device),
            self._errors.labels(model, device),
            tuple(self._stage.labels(model, device, stage) for stage in STAGES),
        )

    def update(self, health: Mapping[str, Any]) -> None:
        """Take the newest health snapshot (schema edgetpud.health/1): one reference swap."""
        self._snapshot = health

    @property
    def snapshot(self) -> Mapping[str, Any]:
        return self._snapshot

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition the `Accept` header asks for (OpenMetrics or Prometheus text)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _SnapshotCollector:
    """Renders the last health snapshot; called by prometheus_client at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # families depend on the snapshot; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        health = self._metrics.snapshot
        if not health:
            return
        sections: tuple[tuple[Callable[[Any], Iterator[Metric]], str, Any], ...] = (
            (_daemon, "daemon", {}),
            (_models, "models", {}),
            (_devices, "devices", []),
            (_buses, "buses", []),
            (_hosts, "hosts", {}),
            (_mqtt, "mqtt", {}),
            (_frigate, "frigate", {}),
        )
        for render, key, empty in sections:
            try:  # one section of an unexpected shape costs its own series, not the scrape
                yield from list(render(health.get(key) or empty))
            except Exception:
                log.exception("metrics: could not render the %s section of health", key)


def _daemon(d: Mapping[str, Any]) -> Iterator[Metric]:
    info = InfoMetricFamily(f"{PREFIX}_build", "The daemon's version and TFLite runtime.")
    info.add_metric(
        [],
        {
            "version": str(d.get("version", "")),
            "runtime": str(d.get("runtime") or ""),
            "libedgetpu": str(d.get("libedgetpu") or ""),
        },
    )
    yield info
    up = GaugeMetricFamily(f"{PREFIX}_uptime_seconds", "Seconds since the daemon started.")
    up.add_metric([], float(d.get("uptime_s") or 0.0))
    yield up
    gen = GaugeMetricFamily(
        f"{PREFIX}_config_generation", "Config generation: 1 at start, +1 per applied reload."
    )
    gen.add_metric([], float(d.get("config_generation") or 0))
    yield gen


def _models(models: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        f"{PREFIX}_model_state",
        "1 for the model's current state (running, starting, waiting, disabled).",
        labels=["model", "state", "tier"],
    )
    depth = GaugeMetricFamily(
        f"{PREFIX}_queue_depth", "Requests waiting in the model's queue.", labels=["model"]
    )
    dropped = CounterMetricFamily(
        f"{PREFIX}_requests_dropped",
        "Requests dropped by the model's queue overflow policy.",
        labels=["model"],
    )
    replicas = GaugeMetricFamily(
        f"{PREFIX}_model_devices", "Devices serving the model now.", labels=["model"]
    )
    for name, m in models.items():
        state.add_metric([name, str(m.get("state", "")), str(m.get("tier", ""))], 1.0)
        depth.add_metric([name], float(m.get("queue_depth") or 0))
        dropped.add_metric([name], float(m.get("dropped") or 0))
        replicas.add_metric([name], float(len(m.get("devices") or ())))
    yield from (state, depth, dropped, replicas)


def _devices(devices: list[Mapping[str, Any]]) -> Iterator[Metric]:
    info = InfoMetricFamily(
        f"{PREFIX}_device",
        "One Edge TPU: identity, kind, USB bus and port, link speed, verdict, health.",
        labels=["identity"],
    )
    temp = GaugeMetricFamily(
        f"{PREFIX}_device_temperature_celsius",
        "PCIe/M.2 module temperature (USB Accelerators report none).",
        labels=["identity"],
    )
    level = GaugeMetricFamily(
        f"{PREFIX}_device_throttle_level",
        "Trip points the module's temperature has reached: 0 full clock .. 3 shut down.",
        labels=["identity"],
    )
    usable = GaugeMetricFamily(
        f"{PREFIX}_device_usable",
        "1 when the device may be used (verdict not rejected, not quarantined or hung).",
        labels=["identity"],
    )
    for dev in devices:
        ident = str(dev.get("identity", ""))
        health = dev.get("health") or {}
        info.add_metric(
            [ident],
            {
                "kind": str(dev.get("kind", "")),
                "bus": str(dev.get("bus", "")),
                "port": str(dev.get("port", "")),
                "speed_mbps": str(dev.get("speed_mbps", 0)),
                "verdict": str(dev.get("verdict", "")),
                "health": str(health.get("state", "ok")),
            },
        )
        if dev.get("temperature") is not None:
            temp.add_metric([ident], float(dev["temperature"]))
            level.add_metric([ident], float(dev.get("throttle_level") or 0))
        ok = dev.get("verdict") != "rejected" and health.get("state", "ok") == "ok"
        usable.add_metric([ident], 1.0 if ok else 0.0)
    yield from (info, temp, level, usable)


def _buses(buses: list[Mapping[str, Any]]) -> Iterator[Metric]:
    rate = GaugeMetricFamily(
        f"{PREFIX}_usb_bus_inferences_per_second",
        "Inferences per second through the accelerators on one USB bus.",
        labels=["bus"],
    )
    traffic = GaugeMetricFamily(
        f"{PREFIX}_usb_bus_bytes_per_second",
        "Model input + output bytes per second through one USB bus.",
        labels=["bus"],
    )
    count = GaugeMetricFamily(
        f"{PREFIX}_usb_bus_accelerators", "Accelerators on one USB bus.", labels=["bus"]
    )
    for bus in buses:
        name = str(bus.get("bus", ""))
        rate.add_metric([name], float(bus.get("inferences_per_s") or 0.0))
        traffic.add_metric([name], float(bus.get("bytes_per_s") or 0.0))
        count.add_metric([name], float(len(bus.get("accelerators") or ())))
    yield from (rate, traffic, count)


def _hosts(hosts: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """health["hosts"]: {device: {pid, state, restarts, deaths, last_exit, sessions}}."""
    restarts = CounterMetricFamily(
        f"{PREFIX}_device_host_restarts",
        "Restarts of the process that runs a device's runtime (aborts, hangs, kills).",
        labels=["device"],
    )
    up = GaugeMetricFamily(
        f"{PREFIX}_device_host_up",
        "1 while the device's host process runs, 0 while it is restarting or given up.",
        labels=["device"],
    )
    for device, host in sorted(hosts.items()):
        restarts.add_metric([str(device)], float(host.get("restarts") or 0))
        up.add_metric([str(device)], 1.0 if host.get("state") == "running" else 0.0)
    yield from (restarts, up)


def _mqtt(m: Mapping[str, Any]) -> Iterator[Metric]:
    connected = GaugeMetricFamily(f"{PREFIX}_mqtt_connected", "1 while the broker link is up.")
    connected.add_metric([], 1.0 if m.get("connected") else 0.0)
    backlog = GaugeMetricFamily(
        f"{PREFIX}_mqtt_backlog_messages", "Messages waiting to be sent or acknowledged."
    )
    backlog.add_metric([], float(m.get("backlog") or 0))
    connects = CounterMetricFamily(
        f"{PREFIX}_mqtt_connects", "Successful connections to the broker (reconnects included)."
    )
    connects.add_metric([], float(m.get("connects") or 0))
    published = CounterMetricFamily(f"{PREFIX}_mqtt_published", "Messages the broker took.")
    published.add_metric([], float(m.get("published") or 0))
    lost = CounterMetricFamily(
        f"{PREFIX}_mqtt_backlog_dropped", "Oldest results dropped because the backlog was full."
    )
    lost.add_metric([], float(m.get("backlog_dropped") or 0))
    accepted = CounterMetricFamily(
        f"{PREFIX}_mqtt_requests_accepted", "Requests taken from MQTT into a model's queue."
    )
    accepted.add_metric([], float(m.get("requests_accepted") or 0))
    refused = CounterMetricFamily(
        f"{PREFIX}_mqtt_requests_refused",
        "Requests answered with a refusal before inference, by reason.",
        labels=["reason"],
    )
    for reason, n in sorted((m.get("requests_rejected") or {}).items()):
        refused.add_metric([str(reason)], float(n))
    yield from (connected, backlog, connects, published, lost, accepted, refused)


def _frigate(f: Mapping[str, Any]) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        f"{PREFIX}_frigate_requests",
        "Frigate detector requests, by client and outcome.",
        labels=["client", "outcome"],
    )
    for client, counts in sorted((f.get("clients") or {}).items()):
        for outcome in ("answered", "empty", "expired"):  # edgetpud.frigate.clients.OUTCOMES
            requests.add_metric([str(client), outcome], float((counts or {}).get(outcome) or 0))
    yield requests


# ---------------------------------------------------------------------------- HTTP


class MetricsServer:
    """`GET /metrics` on `listen` in one thread of its own; `close()` is idempotent."""

    def __init__(self, metrics: Metrics, listen: str) -> None:
        self.metrics = metrics
        self.listen = listen
        host, port = parse_listen(listen)
        handler = _handler(metrics)
        family = _family(host)
        server_cls = type("_Server", (ThreadingHTTPServer,), {"address_family": family})
        try:
            self._server = server_cls((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                [
                    ConfigIssue(
                        "metrics.listen",
                        f"cannot listen on {listen}: {exc.strerror or exc}; choose a free "
                        "port or an address of this machine",
                    )
                ]
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics:http", daemon=True
        )
        self._closed = False

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s/metrics", self.listen)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _family(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _handler(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edgetpud-metrics"

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served here")
                return
            body, content_type = metrics.render(self.headers.get("Accept", ""))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics: " + format, *args)

    return Handler


class MetricsComponent:
    """The daemon's side (daemon.ports.Component, ObservesResults, ReadsHealth): serves
    `[metrics] listen` and moves it on reload. Off (listen empty) it records nothing."""

    name = "metrics"

    def __init__(self, cfg: Config) -> None:
        self.metrics = Metrics()
        self._listen = cfg.metrics.listen
        self._server: MetricsServer | None = None
        self._error = ""

    def start(self) -> None:
        self._serve(self._listen)

    def apply_config(self, cfg: Config) -> None:
        if cfg.metrics.listen != self._listen or (self._server is None and self._error):
            self._close()
            self._listen = cfg.metrics.listen
            self._serve(self._listen)

    def health(self) -> Mapping[str, Any] | None:
        if not self._listen:
            return None
        return {"listen": self._listen, "serving": self._server is not None, "error": self._error}

    def stop(self, deadline: float) -> None:
        self._close()

    def observe(self, result: Result) -> None:
        if self._server is not None:
            self.metrics.observe(result)

    def on_health(self, doc: Mapping[str, Any]) -> None:
        self.metrics.update(doc)

    def _serve(self, listen: str) -> None:
        self._error = ""
        if not listen:
            return
        try:
            server = MetricsServer(self.metrics, listen)
        except ConfigError as exc:
            self._error = str(exc.issues[0])
            log.error("%s; the daemon carries on without metrics", self._error)
            return
        server.start()
        self._server = server

    def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
