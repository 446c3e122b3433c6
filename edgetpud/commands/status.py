"""`edgetpud status [--fleet]`: the daemon's retained health topic as a table.

Reads `<prefix>/<node>/health` (or `<prefix>/+/health` with --fleet) from the broker
in the config, so it shows what a dashboard sees. Exit 0 when every node found is
online, 1 when a node is offline or nothing was found, 2 when the broker or the
config cannot be used.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

from edgetpud.commands import load_config
from edgetpud.errors import ConfigUnreadableError

REASON_WIDTH = 72  # a longer REASON is cut, with a note under the table


CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: the table is redrawn in place


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if isinstance(cfg, int):
        return cfg
    every = getattr(args, "watch", None)
    if every is None:
        text, code, failed = _once(cfg, args)
        print(text, file=sys.stderr if failed else sys.stdout)
        return code
    return watch(cfg, args, max(every, 0.2))


def watch(cfg: Any, args: argparse.Namespace, every: float) -> int:
    """Redraw the table every `every` seconds until interrupted; a broker that is away
    is shown as such and retried, so an operator's terminal survives a broker restart.
    On a terminal the screen is cleared each time; piped, the tables follow each other."""
    tty = sys.stdout.isatty()
    code = 0
    try:
        while True:
            text, code, _ = _once(cfg, args)
            stamp = time.strftime("%H:%M:%S")
            head = f"edgetpud status, every {every:g}s (Ctrl-C to stop) - {stamp}"
            sys.stdout.write((CLEAR if tty else "\n") + head + "\n\n" + text + "\n")
            sys.stdout.flush()
            time.sleep(every)
    except KeyboardInterrupt:
        return code if code == 2 else 0


def _once(cfg: Any, args: argparse.Namespace) -> tuple[str, int, bool]:
    """The table (or what went wrong, flagged True) and the exit code for one reading."""
    from edgetpud import mqtt  # paho is loaded only by the verbs that talk MQTT

    prefix = cfg.mqtt.topic_prefix
    node = "+" if args.fleet else cfg.node_id
    try:
        health = mqtt.read_retained(cfg.mqtt, f"{prefix}/{node}/health", args.timeout)
        status = mqtt.read_retained(cfg.mqtt, f"{prefix}/{node}/status", args.timeout)
    except ConnectionError as exc:
        return f"error: {exc}", 2, True
    except ConfigUnreadableError as exc:  # e.g. the service's 0600 password file, read by a user
        return f"error: {exc}; run edgetpud status with sudo to read them", 2, True
    nodes: dict[str, dict[str, Any]] = {}
    for topic, data in health.items():
        name = topic[len(prefix) + 1 : -len("/health")]
        try:
            body = json.loads(data)
        except ValueError:
            body = {}
        nodes[name] = body if isinstance(body, dict) else {}
    online = {
        t[len(prefix) + 1 : -len("/status")]: d.decode(errors="replace") for t, d in status.items()
    }
    for name in online:
        nodes.setdefault(name, {})
    if not nodes:
        where = f"{prefix}/+/health" if args.fleet else f"{prefix}/{cfg.node_id}/health"
        return (
            f"no retained health on {where} at {cfg.mqtt.host}:{cfg.mqtt.port}; is edgetpud "
            "running and using this broker and topic prefix?",
            1,
            True,
        )
    code = 0 if all(online.get(n) == "online" for n in nodes) else 1
    return render(nodes, online, fleet=args.fleet), code, False


NODE_HEADER = (
    "NODE", "STATUS", "VERSION", "UPTIME", "CONFIG", "HEALTH", "BACKLOG", "LAST RELOAD ERROR"
)  # fmt: skip
DEVICE_HEADER = (
    "NODE", "DEVICE", "KIND", "SPEED", "VERDICT", "STATE", "TEMP", "MODELS", "REASONS"
)  # fmt: skip
MODEL_HEADER = (
    "NODE", "MODEL", "STATE", "PLACEMENT", "TIER", "RATE", "P50", "P99", "QUEUE", "DROPPED",
    "ERRORS", "REASON",
)  # fmt: skip
FRIGATE_HEADER = (
    "NODE", "FRIGATE CLIENT", "STATE", "MODEL", "REQUESTS", "ANSWERED", "EMPTY", "EXPIRED",
    "LAST SEEN", "WHY EMPTY",
)  # fmt: skip
HOST_HEADER = ("NODE", "HOST FOR", "PID", "STATE", "RESTARTS", "DEATHS", "LAST EXIT")
CUT_NOTE = (
    f"\n(a REASON ending in … is cut to {REASON_WIDTH} characters; the node's log "
    "has it whole: journalctl -u edgetpud)"
)


def render(
    nodes: Mapping[str, Mapping[str, Any]],
    online: Mapping[str, str],
    now: float | None = None,
    *,
    fleet: bool = False,
) -> str:
    """Tables of nodes, devices and models (then Frigate clients and device hosts when a
    node has them) with a NODE column, one row per item; a table with no rows is left
    out, except the nodes'.

    With `fleet`, a further table sums each model over the online nodes: how many
    serve it, on how many devices, the total rate, queue and results.
    """
    now = time.time() if now is None else now
    names = sorted(nodes)
    models = [(n, m) for n in names for m in _items(nodes[n].get("models"), "name")]
    parts = [_table(NODE_HEADER, [_node_row(n, nodes[n], online, now) for n in names])]
    device_rows = [row for n in names for row in _device_rows(n, nodes[n])]
    if device_rows:
        parts.append(_table(DEVICE_HEADER, device_rows))
    if models:
        cut = any(len(model_reason(m)) > REASON_WIDTH for _, m in models)
        rows = [_model_row(n, m) for n, m in models]
        parts.append(_table(MODEL_HEADER, rows) + (CUT_NOTE if cut else ""))
    for header, rows_of in ((FRIGATE_HEADER, _frigate_rows), (HOST_HEADER, _host_rows)):
        rows = [row for n in names for row in rows_of(n, nodes[n])]
        if rows:
            parts.append(_table(header, rows))
    if fleet and models:
        parts.append(_fleet_table(nodes, online))
    refused = [line for n in names for line in _mqtt_refusals(n, nodes[n])]
    if refused:
        parts.append("\n".join(refused))
    return "\n\n".join(parts)


def _node_row(
    node: str, health: Mapping[str, Any], online: Mapping[str, str], now: float
) -> list[str]:
    """The daemon itself: online or not, version, uptime, config, age of this health."""
    daemon = _mapping(health.get("daemon"))
    mq = _mapping(health.get("mqtt"))
    when = health.get("time")
    age = now - when if _finite(when) else None
    return [
        node,
        online.get(node, "?"),
        str(daemon.get("version", "")),
        _duration(daemon.get("uptime_s")),
        str(daemon.get("config_generation", "")),
        _duration(age) + " ago" if age is not None else "",
        str(mq.get("backlog", "")),
        reload_error(daemon.get("last_reload_error"), daemon.get("config")),
    ]


def _device_rows(node: str, health: Mapping[str, Any]) -> list[list[str]]:
    """One row per Edge TPU: its verdict and state, temperature, models, and why."""
    return [
        [node, str(dev.get("identity", "")), str(dev.get("kind", "")), _speed(dev),
         str(dev.get("verdict", "")), str(dev.get("state", "")),
         _num(dev.get("temperature"), "°C"), _joined(dev.get("models"), ", "),
         _joined(dev.get("reasons"), "; ")]
        for dev in _items(health.get("devices"), "identity")
    ]  # fmt: skip


def _model_row(node: str, model: Mapping[str, Any]) -> list[str]:
    """One model: where it runs, its rate and latency, queue, losses, and why it does not
    run on an Edge TPU (cut to REASON_WIDTH)."""
    return [
        node, str(model.get("name", "")), str(model.get("state", "")),
        _joined(model.get("devices"), ", "), str(model.get("tier", "")),
        _num(model.get("rate"), "/s"), _num(model.get("p50_ms"), " ms"),
        _num(model.get("p99_ms"), " ms"), str(model.get("queue_depth", "")),
        str(model.get("dropped", "")), str(model.get("errors", "")),
        _cut(model_reason(model), REASON_WIDTH),
    ]  # fmt: skip


def _mqtt_refusals(node: str, health: Mapping[str, Any]) -> list[str]:
    """Lines for publishes the broker refused and response topics the node refused."""
    mq = _mapping(health.get("mqtt"))
    out = []
    denied = mq.get("publish_denied") or {}
    if isinstance(denied, Mapping) and denied:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(denied.items()))
        out.append(
            f"{node}: the broker refused publishes ({counts}); let the daemon's MQTT user "
            'write those topics in the broker\'s ACL (docs/mqtt.md, "Broker ACL")'
        )
    topics = mq.get("response_topics_refused") or {}
    if isinstance(topics, Mapping) and topics:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(topics.items()))
        out.append(
            f"{node}: requests refused for their response topic ({counts}); see docs/mqtt.md, "
            '"Response topics"'
        )
    return out


def _host_rows(node: str, health: Mapping[str, Any]) -> list[list[str]]:
    """The device hosts (docs/workers.md): one process per device in use, and how it ended
    last time it died."""
    return [
        [node, str(h.get("device", "")), str(h.get("pid") or "-"), str(h.get("state", "")),
         str(h.get("restarts", 0)), str(h.get("deaths", 0)),
         _cut(str(h.get("last_exit") or ""), REASON_WIDTH)]
        for h in _items(health.get("hosts"), "device")
    ]  # fmt: skip


def _frigate_rows(node: str, health: Mapping[str, Any]) -> list[list[str]]:
    """The Frigate endpoint (docs/frigate.md): a row for its totals, one per client."""
    f = health.get("frigate")
    if not isinstance(f, Mapping) or not f.get("endpoint"):
        return []
    state = str(f.get("state", ""))
    why = str(f.get("error") or f.get("unavailable") or "")
    rows = [
        [node, f"(all) {f.get('endpoint', '')}", state, str(f.get("model", "")),
         *(str(f.get(k, 0)) for k in ("requests", "answered", "empty", "expired")), "",
         _cut(why, REASON_WIDTH)]
    ]  # fmt: skip
    now = time.time()
    clients = f.get("clients")
    for client, c in clients.items() if isinstance(clients, Mapping) else ():
        if not isinstance(c, Mapping):
            continue
        seen = c.get("last_seen")
        rows.append(
            [node, str(client), "", str(c.get("detector_model", "")),
             *(str(c.get(k, 0)) for k in ("requests", "answered", "empty", "expired")),
             _duration(now - seen) + " ago" if _finite(seen) else "",
             _cut(str(c.get("last_empty", "")), REASON_WIDTH)]
        )  # fmt: skip
    return rows


def model_reason(model: Mapping[str, Any]) -> str:
    """Why a model does not run on an Edge TPU (disabled, waiting, or on the CPU): the
    first line of its health `reason`, whole; "" when it runs or starts on an Edge TPU
    (PLACEMENT and TIER say where)."""
    if model.get("state") in ("running", "starting") and model.get("tier") != "cpu":
        return ""
    reason = model.get("reason")
    if not isinstance(reason, str):
        return ""
    lines = [line for line in reason.splitlines() if line.strip()]
    return " ".join(lines[0].split()).removeprefix("waiting: ") if lines else ""


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


# ConfigError's text: "<path>: <n> problem(s) in the configuration:", then one problem a line
_PROBLEMS_HEAD = re.compile(r"^(?:(?P<path>.+?): )?(?P<count>\d+) problem\(s\).*:$")


def reload_error(error: Any, config_path: Any = None) -> str:
    """`last_reload_error` on one line. A refused config (a header line, then one line per
    problem) becomes `2 problems, first: <problem>; run edgetpud check-config PATH`; any
    other error has its lines joined."""
    if not error:
        return ""
    lines = [" ".join(line.split()) for line in str(error).splitlines() if line.strip()]
    head = _PROBLEMS_HEAD.match(lines[0]) if len(lines) > 1 else None
    if head is None:
        return "; ".join(lines)
    count = int(head.group("count"))
    path = config_path or head.group("path") or ""
    hint = f"run edgetpud check-config {path}".rstrip()
    if count == 1:
        return f"1 problem: {lines[1]}; {hint}"
    return f"{count} problems, first: {lines[1]}; {hint}"


def _fleet_table(nodes: Mapping[str, Mapping[str, Any]], online: Mapping[str, str]) -> str:
    totals: dict[str, dict[str, float]] = {}
    for name, h in nodes.items():
        if online.get(name) != "online":
            continue  # a dead node's last health is stale: it serves nothing now
        for model in _items(h.get("models"), "name"):
            t = totals.setdefault(
                str(model.get("name", "")),
                {"nodes": 0, "devices": 0, "rate": 0.0, "queue": 0, "results": 0, "errors": 0},
            )
            t["nodes"] += 1 if model.get("state") == "running" else 0
            devices = model.get("devices")
            t["devices"] += len(devices) if isinstance(devices, list) else 0
            for key, field in (
                ("rate", "rate"),
                ("queue", "queue_depth"),
                ("results", "results"),
                ("errors", "errors"),
            ):
                value = model.get(field)
                if _finite(value):
                    t[key] += value
    rows = [
        [
            model,
            str(int(t["nodes"])),
            str(int(t["devices"])),
            _num(t["rate"], "/s"),
            str(int(t["queue"])),
            str(int(t["results"])),
            str(int(t["errors"])),
        ]
        for model, t in sorted(totals.items())
    ]
    header = ["FLEET MODEL", "NODES", "DEVICES", "RATE", "QUEUE", "RESULTS", "ERRORS"]
    return _table(header, rows)


def _mapping(section: Any) -> Mapping[str, Any]:
    """A health section that should be an object, or {} when a node sent something else."""
    return section if isinstance(section, Mapping) else {}


def _joined(values: Any, sep: str) -> str:
    """A list field as text; a field of another type as it came."""
    if isinstance(values, list):
        return sep.join(map(str, values))
    return "" if values is None else str(values)


def _finite(value: Any) -> TypeGuard[float]:
    """A number a table can show: not a bool, not infinite, not NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _items(section: Any, key: str) -> Iterable[Mapping[str, Any]]:
    """A health section as a list of records, whether it is a list or a mapping by name."""
    if isinstance(section, Mapping):
        return [{key: k, **v} if isinstance(v, Mapping) else {key: k} for k, v in section.items()]
    if isinstance(section, list):
        return [x for x in section if isinstance(x, Mapping)]
    return []


def _speed(dev: Mapping[str, Any]) -> str:
    mbps = dev.get("speed_mbps")
    if _finite(mbps) and mbps:
        return f"{mbps:g}M"
    return ""


def _num(value: Any, unit: str) -> str:
    if not _finite(value):
        return ""
    return f"{value:.1f}{unit}"


def _duration(seconds: Any) -> str:
    if not _finite(seconds):
        return ""
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)
