"""The TOML configuration: frozen dataclasses, validated all at once.

`load(path)` returns a `Config` or raises `ConfigError` carrying every problem
with its dotted key path (`models.birds.priority: must be an integer ...`), or
`ConfigUnreadableError` when the file cannot be read or parsed at all.
Every field's one-line description doubles as the generated reference in
docs/configuration.md.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import ssl
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edgetpud import labels as labels_file
from edgetpud import pathcheck, plugins
from edgetpud.errors import (
    ConfigError,
    ConfigIssue,
    ConfigUnreadableError,
    ModelError,
    PluginError,
)
from edgetpud.modelfile import TFLITE_IDENTIFIER
from edgetpud.payloads import DEFAULT_MAX_DECODE_BYTES
from edgetpud.schema import Context, did_you_mean, join, load_table, option, show
from edgetpud.topicfilter import check_filter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/edgetpud/edgetpud.toml")
TOPIC_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PORT_PATH = re.compile(r"^\d+-\d+(\.\d+)*$")
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(name: str) -> str:
    """`name` as one part of a dotted TOML key: bare when it can be, else quoted."""
    return name if BARE_KEY.match(name) else show(name)


def check_topic_segment(value: str) -> str | None:
    """Problem text if `value` cannot be one MQTT topic level, else None."""
    if value == "" or TOPIC_SEGMENT.match(value):
        return None
    return (
        f"{show(value)} cannot be used in an MQTT topic: use 1-64 letters, digits, "
        '"_", "-" or "." (no "/", "+", "#" or spaces), starting with a letter or digit'
    )


def check_node_id(value: str) -> str | None:
    """A topic level that is not "fleet": <prefix>/fleet/... holds the fleet's shared topics."""
    if value == "fleet":
        return (
            '"fleet" is reserved: <topic_prefix>/fleet/models/<model>/infer is the fleet\'s '
            "shared request topic; choose another node_id"
        )
    return check_topic_segment(value)


MAX_PREFIX_CHARS = 200  # topics stay far below MQTT's 65,535 bytes with model names added
MQTT_STRING_BYTES = 65_535  # MQTT's UTF-8 string limit (client id, user name, password)
MAX_HOST_CHARS = 253  # the longest DNS name
MAX_MODELS = 256
MAX_GLOBS = 256
MAX_PASSWORD_FILE_BYTES = 1024 * 1024


def _mqtt_string(value: str, what: str) -> str | None:
    """Problem text if `value` cannot travel as an MQTT UTF-8 string, else None."""
    if "\0" in value:
        return f"{what} contains a NUL character, which MQTT forbids; remove it"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MQTT_STRING_BYTES:
        return (
            f"{what} is {size:,} bytes, over MQTT's limit of {MQTT_STRING_BYTES:,} bytes for "
            "a string (the MQTT client would die on connect); shorten it"
        )
    return None


def check_client_id(value: str) -> str | None:
    """MQTT's string limit; what MQTT 3.1.1 brokers must accept is only 1-23 characters."""
    return _mqtt_string(value, "the client id") or (
        None
        if not value or value.isprintable()
        else "the client id holds control characters; use letters, digits, - and _"
    )


def check_username(value: str) -> str | None:
    return _mqtt_string(value, "the user name")


def check_host(value: str) -> str | None:
    if len(value) > MAX_HOST_CHARS or any(c.isspace() or not c.isprintable() for c in value):
        return (
            f"{show(value[:60])}{'...' if len(value) > 60 else ''} is not a host name or address "
            f"(at most {MAX_HOST_CHARS} characters, no spaces or control characters)"
        )
    return None


def check_globs(value: tuple[str, ...]) -> str | None:
    if len(value) > MAX_GLOBS:
        return f"has {len(value)} patterns, over the limit of {MAX_GLOBS}; use wider globs"
    return None


def check_response_topics(value: tuple[str, ...]) -> str | None:
    if len(value) > MAX_GLOBS:
        return f"has {len(value)} filters, over the limit of {MAX_GLOBS}"
    for item in value:
        problem = check_filter(item)
        if problem:
            return problem
    return None


def check_topic_prefix(value: str) -> str | None:
    if len(value) > MAX_PREFIX_CHARS:
        return (
            f"is {len(value)} characters long, over the limit of {MAX_PREFIX_CHARS} for a "
            "topic prefix; shorten it"
        )
    parts = value.split("/")
    if any(not p or check_topic_segment(p) for p in parts):
        return (
            f'{show(value)} is not a usable topic prefix: use levels of letters, digits, "_", '
            '"-" or "." separated by single "/", with no wildcards and no leading or trailing "/"'
        )
    return None


def check_device_selector(value: str) -> str | None:
    if value in ("any", "pci", "usb", "cpu"):
        return None
    if value.startswith("usb:") and PORT_PATH.match(value[4:]):
        return None
    if value.startswith("pci:") and len(value) > 4:
        return None
    return (
        f'must be "any", "pci", "usb", "cpu" or a device identity such as "usb:2-3.1" or '
        f'"pci:0000:03:00.0" (see `edgetpud devices`), got {show(value)}'
    )


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'expected "host:port" such as "127.0.0.1:9464", got {show(value)}')
    host = host.strip("[]")
    if not host:
        raise ValueError(f'give the address to listen on as well, e.g. "127.0.0.1:{port}"')
    return host, int(port)


def check_listen(value: str) -> str | None:
    if value == "":
        return None
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class DaemonConfig:
    node_id: str = option(
        "Name of this box in MQTT topics and health; empty means the hostname.",
        "",
        check=check_node_id,
    )
    state_dir: Path = option(
        "Where learned facts (bad ports) are kept across restarts; unset: systemd's "
        "$STATE_DIRECTORY, else /var/lib/edgetpud.",
        Path("/var/lib/edgetpud"),
        kind="path",
    )
    health_interval: float = option(
        "How often the retained health snapshot is republished.",
        10.0,
        kind="duration",
        minimum=0.1,
        maximum=3600,
    )
    stall_timeout: float = option(
        "An invoke running longer than this marks its worker hung and its device suspect.",
        5.0,
        kind="duration",
        minimum=0.01,
        maximum=600,
    )
    drain_timeout: float = option(
        "On stop or model restart, how long in-flight requests may take to finish.",
        5.0,
        kind="duration",
        minimum=0,
        maximum=600,
    )
    waiting_timeout: float = option(
        "How long MQTT requests for a model with no usable device (no Edge TPU for it, no "
        "cpu_model) wait for one; then they are answered with a no_device error, and new "
        "ones refused at once, until the model runs again. 0 waits forever.",
        30.0,
        kind="duration",
        minimum=0,
        maximum=86400,
    )
    log_level: Literal["debug", "info", "warning", "error"] = option(
        "Log verbosity on stderr (journald captures it).", "info"
    )
    max_decode_bytes: int = option(
        "Most memory decoding one image may take: width x height x bytes per pixel plus its "
        "RGB copy and the decoder's work (about 6 bytes per pixel for a JPEG photo, 10 for an "
        "RGBA PNG); larger images are refused from their header, before decoding. The "
        "default (96 MiB) takes a 16-megapixel photo.",
        DEFAULT_MAX_DECODE_BYTES,
        minimum=1024 * 1024,
        maximum=16 * 1024 * 1024 * 1024,
    )


@dataclass(frozen=True)
class MqttConfig:
    host: str = option("Broker host name or address.", "localhost", check=check_host)
    port: int = option(
        "Broker port (1883 plain, 8883 TLS by convention).", 1883, minimum=1, maximum=65535
    )
    transport: Literal["tcp", "websockets"] = option("How to reach the broker.", "tcp")
    protocol: Literal["3.1.1", "5"] = option(
        "MQTT protocol version; 5 enables response topics and correlation data.", "5"
    )
    client_id: str = option(
        "MQTT client id; empty means edgetpud-<node_id>. At most 65,535 bytes (MQTT's limit); "
        "MQTT 3.1.1 brokers need only accept 1-23 letters and digits.",
        "",
        check=check_client_id,
    )
    topic_prefix: str = option(
        "First topic levels; topics are <topic_prefix>/<node_id>/...",
        "edgetpud",
        check=check_topic_prefix,
    )
    qos: int = option("QoS for results and events (0, 1 or 2).", 1, minimum=0, maximum=2)
    keepalive: float = option(
        "MQTT keepalive interval.", 60.0, kind="duration", minimum=5, maximum=3600
    )
    backlog_limit: int = option(
        "Results kept while the broker is unreachable; beyond it the oldest are dropped and counted.",
        10000,
        minimum=0,
        maximum=10_000_000,
    )
    max_request_bytes: int = option(
        "Largest accepted request payload; larger requests get an error reply.",
        8 * 1024 * 1024,
        minimum=64,
        maximum=256 * 1024 * 1024,
    )
    username: str = option("User name for the broker; empty for none.", "", check=check_username)
    password_file: Path | None = option(
        "File holding the broker password (mode 0600); never put the password in this file.",
        None,
        kind="file",
    )
    tls: bool = option("Connect with TLS.", False)
    ca_file: Path | None = option(
        "CA certificate(s) to verify the broker; unset uses the system store.", None, kind="file"
    )
    cert_file: Path | None = option(
        "Client certificate for TLS client authentication.", None, kind="file"
    )
    key_file: Path | None = option("Private key of the client certificate.", None, kind="file")
    tls_insecure: bool = option(
        "Skip verifying the broker's host name (only for testing; never in production).", False
    )
    homeassistant: bool = option(
        "Publish Home Assistant MQTT discovery for devices and models.", False
    )
    homeassistant_prefix: str = option(
        "Home Assistant's discovery prefix.", "homeassistant", check=check_topic_prefix
    )
    response_topics: tuple[str, ...] = option(
        "MQTT topic filters (+ and # allowed) a request's MQTT 5 response topic must match, "
        'e.g. ["replies/#"]; empty allows any topic outside <topic_prefix>/, the discovery '
        "prefix and $-topics (those are always refused).",
        (),
        check=check_response_topics,
    )


@dataclass(frozen=True)
class RuntimeConfig:
    library: str = option(
        "The Edge TPU runtime library (libedgetpu) to load the delegate from: a name or a path.",
        "libedgetpu.so.1",
    )
    runtime: Literal["auto", "tflite_runtime", "ai_edge_litert"] = option(
        "Which TFLite runtime to use; auto prefers tflite_runtime, then ai_edge_litert.", "auto"
    )
    cpu_fallback: bool = option(
        "Run a model's cpu_model on the CPU when no Edge TPU is available for it.", True
    )
    cpu_threads: int = option("Threads per CPU-fallback interpreter.", 2, minimum=1, maximum=64)
    tpu_interpreters: int = option(
        "Interpreters per model on an Edge TPU. While one invokes, the others prepare their "
        "next requests and queue them on the TPU, so it never waits for Python and rides out "
        "host stalls of up to (n - 1) invokes; each one more costs an input/output arena.",
        4,
        minimum=1,
        maximum=8,
    )


@dataclass(frozen=True)
class DevicesConfig:
    allow: tuple[str, ...] = option(
        'Port-path globs of USB ports that may be used (e.g. ["2-*"]); PCIe identities match too.',
        ("*",),
        check=check_globs,
    )
    deny: tuple[str, ...] = option(
        "Port-path globs never to use; deny wins over allow.", (), check=check_globs
    )
    secondary_ports: Literal["warn", "reject", "allow"] = option(
        "What to do with an accelerator on a secondary port of a cascaded hub.", "warn"
    )
    usb2: Literal["accept", "reject"] = option(
        "Accelerators on a USB 2 link run 2-4x slower; accept them (degraded) or reject them.",
        "accept",
    )
    performance: Literal["std", "max"] = option(
        "Edge TPU clock: max is faster but needs 900 mA per USB port and runs hotter.", "std"
    )
    firmware_debounce: float = option(
        "How long a USB accelerator may vanish while loading its firmware before it counts as unplugged.",
        5.0,
        kind="duration",
        minimum=0,
        maximum=60,
    )
    quarantine_after: int = option(
        "Consecutive invoke errors on one device before it is quarantined.",
        5,
        minimum=1,
        maximum=1000,
    )
    quarantine_backoff: float = option(
        "How long a quarantined device rests before it is tried again (doubles each time).",
        30.0,
        kind="duration",
        minimum=0.1,
        maximum=86400,
    )
    thermal_interval: float = option(
        "How often each PCIe module's temperature is read (the apex driver reports no changes).",
        5.0,
        kind="duration",
        minimum=0.2,
        maximum=3600,
    )


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = option(
        'Serve Prometheus metrics at http://<listen>/metrics, e.g. "127.0.0.1:9464"; empty: off.',
        "",
        check=check_listen,
    )


@dataclass(frozen=True)
class FleetConfig:
    group: str = option(
        "Shared-subscription group for fleet requests; empty turns the fleet topic off.",
        "",
        check=check_topic_segment,
    )


IPC_PREFIX, TCP_PREFIX = "ipc://", "tcp://"
TCP_ENDPOINT = re.compile(
    r"^tcp://(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$"
)


def check_frigate_endpoint(value: str) -> str | None:
    """An ipc:// socket path or a tcp://host:port address ZeroMQ can bind; "" is off."""
    if value == "":
        return None
    if value.startswith(IPC_PREFIX):
        path = value[len(IPC_PREFIX) :]
        if path.startswith("/") and not path.endswith("/") and len(path.encode()) < 108:
            return None
        return (
            f"{show(value)} needs an absolute socket path under 108 bytes after ipc://, "
            'e.g. "ipc:///run/edgetpud/frigate.sock"'
        )
    match = TCP_ENDPOINT.match(value)
    if match and 0 < int(match.group("port")) < 65536:
        return None
    return (
        f'must be "ipc:///<socket path>" or "tcp://<address>:<port>" (e.g. '
        f'"ipc:///run/edgetpud/frigate.sock", "tcp://0.0.0.0:5555"), got {show(value)}'
    )


def check_socket_mode(value: str) -> str | None:
    if re.fullmatch(r"0?[0-7]{3}", value):
        return None
    return f'must be an octal file mode such as "0660", got {show(value)}'


@dataclass(frozen=True)
class FrigateConfig:
    endpoint: str = option(
        "Where Frigate's zmq detectors connect (their detectors.<name>.endpoint): "
        '"ipc:///run/edgetpud/frigate.sock" or "tcp://0.0.0.0:5555"; empty turns it off.',
        "",
        check=check_frigate_endpoint,
    )
    model: str = option(
        'The [models.<name>] that answers Frigate; its postprocess type must be "detect".', ""
    )
    request_timeout: float = option(
        "Frigate's request_timeout_ms: a request older than this is dropped unanswered "
        "(Frigate has already counted it as no detections).",
        0.2,
        kind="duration",
        minimum=0.001,
        maximum=60,
    )
    on_mismatch: Literal["empty", "resize"] = option(
        "A frame whose shape is not the model's input: answer no detections and log it "
        '("empty"), or stretch a uint8 HxWx3 frame to the input ("resize", costs CPU).',
        "empty",
    )
    socket_mode: str = option(
        "File mode of the ipc socket; Frigate's user needs write access to connect.",
        "0660",
        check=check_socket_mode,
    )


@dataclass(frozen=True)
class PluginTable:
    """A `source` or `postprocess` sub-table: the plugin's name and its validated options."""

    type: str
    options: Any = None
    error: str = ""  # lenient_plugins: why the plugin is unusable (options is then None)


@dataclass(frozen=True)
class ModelConfig:
    model: Path = option(
        "The .tflite model (an _edgetpu.tflite build for the Edge TPU).", kind="file"
    )
    cpu_model: Path | None = option(
        "A CPU build of the same model, used when no Edge TPU is available.", None, kind="file"
    )
    labels: Path | None = option(
        "Label file, one label per line, with or without leading ids; it must name every "
        'class the model outputs, a "background" class 0 included (a misfit is logged).',
        None,
        kind="file",
    )
    device: str = option(
        'Where it may run: "any", "pci", "usb", "cpu", or one device identity.',
        "any",
        check=check_device_selector,
    )
    priority: int = option("Higher priority models are placed first.", 50, minimum=0, maximum=100)
    replicas: int = option(
        "How many devices should serve this model at once.", 1, minimum=1, maximum=16
    )
    segments: tuple[Path, ...] = option(
        "A model split by Coral's partitioner: its segment files in order, "
        "…_segment_0_of_N first (model names segment 0); it runs as a pipeline, each "
        "segment on an Edge TPU of its own (docs/pipelines.md).",
        (),
        kind="file",
    )
    performance: Literal["", "std", "max"] = option(
        "Clock for this model's Edge TPU; empty uses devices.performance.", ""
    )
    queue_size: int = option(
        "Requests that may wait for this model.", 32, minimum=1, maximum=100000
    )
    overflow: Literal["block", "drop_oldest", "latest"] = option(
        "When the queue is full: block the source (MQTT requests get a busy reply), "
        "drop the oldest request, or keep only the latest.",
        "block",
    )
    enabled: bool = option("Set false to keep the table but not run the model.", True)
    max_batch_wait: float = option(
        "On an Edge TPU shared with models of another caching token: how long this model's "
        "requests may wait while another model's run of invokes goes on (runs save "
        "parameter reloads; docs/workers.md).",
        0.05,
        kind="duration",
        minimum=0.0,
        maximum=10,
    )
    source: PluginTable = option(
        "Where requests come from ([models.<name>.source]).", PluginTable("mqtt")
    )
    postprocess: PluginTable = option(
        "What the output means ([models.<name>.postprocess]).", PluginTable("raw")
    )


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    frigate: FrigateConfig = field(default_factory=FrigateConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    path: Path | None = None

    @property
    def node_id(self) -> str:
        return self.daemon.node_id

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edgetpud-{self.daemon.node_id}"


def clock_needed(cfg: Config) -> str:
    """The clock the port verdicts budget power for: "max" (900 mA per accelerator) when
    devices.performance or any enabled model's performance is "max", else "std"."""
    wanted: list[str] = [cfg.devices.performance]
    wanted += [m.performance for m in cfg.models.values() if m.enabled]
    return "max" if "max" in wanted else "std"


SECTIONS: dict[str, type[Any]] = {
    "daemon": DaemonConfig,
    "mqtt": MqttConfig,
    "runtime": RuntimeConfig,
    "devices": DevicesConfig,
    "fleet": FleetConfig,
    "metrics": MetricsConfig,
    "frigate": FrigateConfig,
}


MAX_CONFIG_BYTES = 1024 * 1024  # a full config is a few KB; 256 models fit in ~100 KB
MAX_NESTING = 16  # [models.<name>.source] with an array of arrays is 5 deep


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, or raise ConfigUnreadableError saying why (with line and column).

    Whatever the file holds, only ConfigUnreadableError escapes: a named pipe or device
    node is never opened, a file over MAX_CONFIG_BYTES never read in full, and the
    parser's own blow-ups (RecursionError on arrays nested hundreds deep, ValueError on a
    5,000-digit integer, MemoryError) become one line saying what to fix.
    """
    try:
        data = pathcheck.read_bounded(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigUnreadableError(
            f"{path}: no such file; create it from the example in /etc/edgetpud or pass --config"
        ) from None
    except pathcheck.NotARegularFile as exc:
        if str(exc) == "is a folder, not a file":
            raise ConfigUnreadableError(
                f"{path}: is a folder, not a config file; give the .toml file inside it"
                + _toml_file_in(path)
            ) from None
        raise ConfigUnreadableError(
            f"{path}: {exc}; give the path of the .toml config file"
        ) from None
    except pathcheck.TooLarge as exc:
        raise ConfigUnreadableError(
            f"{path}: is {exc.size} bytes, over the {MAX_CONFIG_BYTES}-byte limit for a "
            "config file (a full one is a few KB); is this the right file?"
        ) from None
    except PermissionError:
        raise ConfigUnreadableError(
            f"{path}: permission denied; the file must be readable by the user running edgetpud"
        ) from None
    except OSError as exc:
        raise ConfigUnreadableError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigUnreadableError(
            f"{path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8"
        ) from None
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigUnreadableError(
            f"{path}: not valid TOML: {_toml_problem(str(exc), text, path)}"
        ) from None
    except RecursionError:
        raise ConfigUnreadableError(
            f"{path}: arrays or inline tables are nested hundreds of levels deep, too deep for "
            f"the TOML parser; an edgetpud config nests at most {MAX_NESTING} levels: fix or "
            "replace the file"
        ) from None
    except (ValueError, MemoryError, OverflowError) as exc:  # e.g. a 5,000-digit integer
        raise ConfigUnreadableError(
            f"{path}: the TOML parser cannot read it ({_parser_failure(exc)}); fix or "
            "replace the file"
        ) from None
    _check_nesting(parsed, path)
    return parsed


def _parser_failure(exc: BaseException) -> str:
    """What made tomllib fail outside its own TOMLDecodeError, in a user's words."""
    text = " ".join(str(exc).split())
    if "integer string conversion" in text:
        return "a number has thousands of digits; no setting takes a number that large"
    if isinstance(exc, MemoryError):
        return "it ran out of memory"
    return text[:200] or type(exc).__name__


def _check_nesting(data: dict[str, Any], path: Path) -> None:
    """ConfigUnreadableError naming the first key nested deeper than MAX_NESTING levels.

    Iterative, so it cannot itself run out of stack.
    """
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ConfigUnreadableError(
                f"{path}: {where or 'the document'} is nested {depth} levels deep, over the "
                f"limit of {MAX_NESTING}; no edgetpud setting takes values nested like that"
            )
        if isinstance(value, dict):
            stack.extend((v, join(where, toml_key(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))


def _toml_file_in(folder: Path) -> str:
    """', such as <folder>/x.toml' naming a .toml file in `folder`, or '' when it has none."""
    try:
        found = sorted(p for p in folder.glob("*.toml") if p.is_file())
    except OSError:
        return ""
    preferred = [p for p in found if p.name == "edgetpud.toml"] or found
    return f", such as {preferred[0]}" if preferred else ""


_TOML_WHERE = re.compile(
    r"^(?P<what>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$",
    re.DOTALL,
)
_TOML_TWICE = re.compile(r"^Can(?:not| not) declare (?P<key>.+) twice$")
_TOML_OVERWRITE = re.compile(r"^Can(?:not| not) overwrite a value$")
_TOML_KEY_LINE = re.compile(r"^\s*(?P<key>[^=\[#]+?)\s*=")


def _toml_problem(error: str, text: str, path: Path) -> str:
    """tomllib's error with its line and column, and what to do about it."""
    match = _TOML_WHERE.match(error)
    what = match.group("what") if match else error
    line = match.group("line") if match else None
    column = match.group("column") if match else None
    twice = _TOML_TWICE.match(what)
    if twice and line:
        try:
            key = ast.literal_eval(twice.group("key"))
        except (ValueError, SyntaxError):
            key = None
        if isinstance(key, tuple) and key and all(isinstance(k, str) for k in key):
            table = ".".join(toml_key(k) for k in key)
            return f"[{table}] appears twice (line {line}): merge the two tables into one"
    if _TOML_OVERWRITE.match(what) and line:
        lines = text.splitlines()
        source = lines[int(line) - 1] if int(line) <= len(lines) else ""
        key_line = _TOML_KEY_LINE.match(source)
        key_text = key_line.group("key") if key_line else ""
        subject = (
            key_text if key_text[:1] in ("'", '"') else show(key_text) if key_text else "a key"
        )
        return f"{subject} is set twice (line {line}, column {column}): keep one"
    where = "at that line" if line else "near the end of the file"
    return f"{error}; fix the TOML syntax {where} (edgetpud check-config {path} checks it)"


def load(
    path: str | Path,
    *,
    registry: plugins.Registry | None = None,
    lenient_plugins: bool = False,
    check_files: bool = False,
) -> Config:
    """Read and validate a config file; raises ConfigError or ConfigUnreadableError.

    `check_files` (check-config) also reads the model and label files a model names: a
    model without the TFLite header or a label file that is not labels is an error. The
    daemon does not: such a model is disabled with the same sentence, the others run."""
    path = Path(path)
    data = read_toml(path)
    _check_not_writable_by_others(path)
    return parse(
        data,
        base_dir=path.resolve().parent,
        source=str(path),
        registry=registry,
        lenient_plugins=lenient_plugins,
        check_files=check_files,
    )


def parse(
    data: dict[str, Any],
    *,
    base_dir: Path | None = None,
    source: str = "",
    registry: plugins.Registry | None = None,
    lenient_plugins: bool = False,
    check_files: bool = False,
) -> Config:
    """Validate already-parsed TOML data; relative paths are taken from `base_dir`."""
    ctx = Context(base_dir=base_dir or Path.cwd())
    reg = registry or plugins.registry()
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            sections[key] = load_table(SECTIONS[key], value, key, ctx)
        elif key != "models":
            where = key or '""'  # TOML allows [""]; the issue still needs a path to point at
            ctx.error(where, "unknown section" + did_you_mean(key, [*SECTIONS, "models"]))
    models = _load_models(data.get("models", {}), ctx, reg, lenient_plugins, check_files)
    for name, cls in SECTIONS.items():
        sections.setdefault(name, cls())
    mqtt: MqttConfig | None = sections["mqtt"]
    if mqtt is not None:
        _check_mqtt(mqtt, ctx)
    frigate: FrigateConfig | None = sections["frigate"]
    if frigate is not None:
        _check_frigate(frigate, models, data.get("models"), ctx)
    if ctx.issues:
        raise ConfigError(ctx.issues, source)
    daemon: DaemonConfig = sections["daemon"]
    if not daemon.node_id:
        daemon = replace(daemon, node_id=default_node_id())
    if "state_dir" not in (data.get("daemon") or {}):
        daemon = replace(daemon, state_dir=default_state_dir())
    return Config(
        daemon=daemon,
        mqtt=sections["mqtt"],
        runtime=sections["runtime"],
        devices=sections["devices"],
        fleet=sections["fleet"],
        metrics=sections["metrics"],
        frigate=sections["frigate"],
        models=models,
        path=Path(source) if source else None,
    )


def default_state_dir() -> Path:
    """systemd's $STATE_DIRECTORY (the unit's StateDirectory=) when set, else /var/lib/edgetpud."""
    env = os.environ.get("STATE_DIRECTORY", "")
    return Path(env.split(":")[0]) if env else Path("/var/lib/edgetpud")


def default_node_id() -> str:
    """The hostname, reduced to characters usable in one MQTT topic level."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]).strip("-.")
    name = name[:64] or "edgetpud"
    return "fleet-node" if name == "fleet" else name  # "fleet" names the fleet's topics


def _load_models(
    data: Any,
    ctx: Context,
    reg: plugins.Registry,
    lenient_plugins: bool = False,
    check_files: bool = False,
) -> dict[str, ModelConfig]:
    if not isinstance(data, dict):
        ctx.error("models", f"must be a table of [models.<name>] tables, got {show(data)}")
        return {}
    if len(data) > MAX_MODELS:
        ctx.error(
            "models",
            f"{len(data):,} models, over the limit of {MAX_MODELS}; a box serves a few dozen "
            "at most (each needs its own worker and device memory): keep the ones it runs",
        )
        return {}
    models: dict[str, ModelConfig] = {}
    for name, table in data.items():
        path = f"models.{toml_key(name)}"
        if not name:
            ctx.error(path, "a model needs a name; name the table, e.g. [models.birds]")
            continue
        problem = check_topic_segment(name)
        if problem:  # it starts with the name, shown quoted
            ctx.error(path, f"the model name {problem}")
            continue
        if not isinstance(table, dict):
            ctx.error(path, f"must be a table, got {show(table)}")
            continue
        extra = {
            kind: _load_plugin_table(
                kind, table.get(kind), join(path, kind), ctx, reg, lenient_plugins
            )
            for kind in ("source", "postprocess")
        }
        model = load_table(ModelConfig, table, path, ctx, extra=extra)
        if model is None:
            continue
        _check_model(model, path, ctx, check_files)
        models[name] = model
    return models


def _load_plugin_table(  # noqa: PLR0917
    kind: str,
    data: Any,
    path: str,
    ctx: Context,
    reg: plugins.Registry,
    lenient_plugins: bool,
) -> PluginTable:
    """Validate one plugin sub-table.

    With `lenient_plugins` (the running daemon), a plugin that is not installed,
    failed to load or lacks its environment does not fail the config: the table
    comes back with `options=None` and `error` set, so only that model is
    disabled. Errors in the plugin's own options always fail the config.
    """
    default = "mqtt" if kind == "source" else "raw"
    if data is None:
        data = {"type": default}
    if not isinstance(data, dict):
        ctx.error(path, f"must be a table with at least a type key, got {show(data)}")
        return PluginTable(default)
    type_name = data.get("type", default)
    if not isinstance(type_name, str):
        ctx.error(
            join(path, "type"), f"must be a string naming a {kind} plugin, got {show(type_name)}"
        )
        return PluginTable(default)
    try:
        cls = reg.get(kind, type_name)
    except PluginError as exc:
        if lenient_plugins:
            if type_name not in reg.statuses:
                reg.mark(type_name, "load_error", str(exc))
            return PluginTable(type_name, None, f"{join(path, 'type')}: {exc}")
        ctx.error(join(path, "type"), str(exc))
        return PluginTable(type_name)
    try:
        cls.check_environment()
    except PluginError as exc:
        if lenient_plugins:
            reg.mark(type_name, "environment_error", str(exc))
            return PluginTable(type_name, None, f"{path}: {exc}")
        ctx.error(path, str(exc))
        return PluginTable(type_name)
    options = load_table(cls.Config, data, path, ctx, ignore=frozenset({"type"}))
    return PluginTable(type_name, options)


def _model_header_problem(file: Path) -> str | None:
    """Why `file` is not a TensorFlow Lite model by its first 8 bytes (the flatbuffer file
    identifier "TFL3" at offset 4), or None; a file this user cannot read is not judged."""
    try:
        with file.open("rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if len(head) == 8 and head[4:8] == TFLITE_IDENTIFIER:
        return None
    what = "is empty" if not head else "lacks the TFL3 marker of a TensorFlow Lite file"
    return (
        f"{file} is not a TensorFlow Lite model (it {what}); give the .tflite file "
        "(an _edgetpu.tflite build from edgetpu_compiler for the Edge TPU)"
    )


def _check_model(model: ModelConfig, path: str, ctx: Context, check_files: bool) -> None:
    if model.segments:
        for i, segment in enumerate(model.segments):
            if problem := _model_header_problem(segment):
                ctx.error(f"{join(path, 'segments')}[{i}]", problem)
        if model.segments[0] != model.model:
            ctx.error(
                join(path, "model"),
                f"with segments, model must be the first segment ({model.segments[0].name}), "
                f"got {model.model.name}",
            )
        if model.replicas != 1:
            ctx.error(
                join(path, "replicas"),
                "a pipelined model (segments) runs one pipeline; its segments take the "
                "devices: leave replicas at 1",
            )
    if check_files:
        _check_model_files(model, path, ctx)
    _check_builds(model, path, ctx)


def _check_model_files(model: ModelConfig, path: str, ctx: Context) -> None:
    for key in ("model", "cpu_model"):
        file = getattr(model, key)
        problem = _model_header_problem(file) if file is not None else None
        if problem:
            ctx.error(join(path, key), problem)
    if model.labels is not None:
        try:
            labels_file.read_labels_text(model.labels)
        except ModelError as exc:
            if "cannot be read" not in str(exc):  # readable only by the service's user
                ctx.error(join(path, "labels"), str(exc))


def _check_builds(model: ModelConfig, path: str, ctx: Context) -> None:
    if model.cpu_model is not None and model.cpu_model.name.endswith("_edgetpu.tflite"):
        ctx.error(
            join(path, "cpu_model"),
            f"{model.cpu_model.name} is an Edge TPU build and cannot run on the CPU; "
            "name the model's plain .tflite build here",
        )
    if (
        model.device == "cpu"
        and model.model.name.endswith("_edgetpu.tflite")
        and model.cpu_model is None
    ):
        ctx.error(
            join(path, "device"),
            '"cpu" was asked but model is an Edge TPU build; set cpu_model to its CPU build',
        )


def _check_frigate(
    frigate: FrigateConfig, models: dict[str, ModelConfig], raw_models: Any, ctx: Context
) -> None:
    if not frigate.endpoint:
        return
    if not frigate.model:
        ctx.error(
            "frigate.model",
            "is empty but frigate.endpoint is set; name the [models.<name>] table that "
            "answers Frigate (an SSD detector with postprocess type detect)",
        )
        return
    model = models.get(frigate.model)
    if model is None:
        if isinstance(raw_models, dict) and frigate.model in raw_models:
            return  # that table has its own errors, reported under its key
        ctx.error(
            "frigate.model",
            f"names no [models.{toml_key(frigate.model)}] table"
            + did_you_mean(frigate.model, models)
            + "; add the table or name one of: "
            + (", ".join(sorted(models)) or "(no models configured)"),
        )
    elif model.postprocess.type != "detect":
        ctx.error(
            "frigate.model",
            f'model {frigate.model} has postprocess type "{model.postprocess.type}"; Frigate '
            "needs detections: set models."
            f'{toml_key(frigate.model)}.postprocess.type = "detect" (an SSD-style model)',
        )


def _check_mqtt(mqtt: MqttConfig, ctx: Context) -> None:
    if not mqtt.tls:
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(mqtt, key) is not None:
                ctx.error(f"mqtt.{key}", "is set but mqtt.tls is false; set tls = true to use it")
        if mqtt.tls_insecure:
            ctx.error("mqtt.tls_insecure", "only makes sense with tls = true")
    if mqtt.key_file is not None and mqtt.cert_file is None:
        ctx.error("mqtt.key_file", "is set without mqtt.cert_file; give the client certificate too")
    if mqtt.password_file is not None:
        if not mqtt.username:
            ctx.error("mqtt.password_file", "is set but mqtt.username is empty; set the user name")
        _check_secret_file(mqtt.password_file, "mqtt.password_file", ctx)
    if mqtt.key_file is not None:
        _check_secret_file(mqtt.key_file, "mqtt.key_file", ctx)
    if mqtt.password_file is not None:
        _check_password_text(mqtt.password_file, ctx)
    if mqtt.tls:
        _check_tls_files(mqtt, ctx)


def _check_password_text(path: Path, ctx: Context) -> None:
    """The daemon reads the password's first line as UTF-8; say so before it fails to."""
    try:
        data = pathcheck.read_bounded(path, MAX_PASSWORD_FILE_BYTES)
    except pathcheck.TooLarge as exc:
        ctx.error(
            "mqtt.password_file",
            f"{path} is {exc.size:,} bytes, over the {MAX_PASSWORD_FILE_BYTES:,}-byte limit "
            "for a password file; is it the right file?",
        )
        return
    except OSError:  # reported by _check_secret_file, or readable only by the service's user
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        ctx.error(
            "mqtt.password_file",
            f"{path} is not UTF-8 text (byte {exc.start}); write the password as the "
            "first line in UTF-8",
        )
        return
    first = text.splitlines()[0] if text else ""
    problem = _mqtt_string(first, "the password (first line)")
    if problem:
        ctx.error("mqtt.password_file", f"{path}: {problem}")


def _ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason, e.g. "X509: NO_CERTIFICATE_OR_CRL_FOUND" or "SSL: PEM lib"."""
    if exc.reason:
        return f"{exc.library}: {exc.reason}" if exc.library else str(exc.reason)
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)
    return re.sub(r"^\[(\w+)\]\s*", r"\1: ", text) or type(exc).__name__


class _Encrypted(Exception):
    """Raised from the pass phrase callback: the key is encrypted."""


def _ask_pass_phrase() -> str:
    # the daemon has no terminal to type a pass phrase into; never let OpenSSL prompt
    raise _Encrypted


def _holds_certificate(path: Path) -> ssl.SSLError | None:
    """None when `path` holds at least one PEM certificate, else OpenSSL's complaint."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        return exc
    return None


def _check_tls_files(mqtt: MqttConfig, ctx: Context) -> None:
    """Load the CA and client certificate as the daemon will, in a throwaway SSL context.

    Files this user cannot read are skipped: the service's user may well read them, and
    missing files were already reported.
    """
    if mqtt.ca_file is not None:
        try:
            problem = _holds_certificate(mqtt.ca_file)
        except OSError:
            problem = None
        if problem is not None:
            found = (
                "holds no PEM certificate"
                if problem.reason == "NO_CERTIFICATE_OR_CRL_FOUND"
                else "cannot be read as PEM certificates"
            )
            ctx.error(
                "mqtt.ca_file",
                f"{mqtt.ca_file} {found} ({_ssl_reason(problem)}); point it at the CA "
                "certificate that signed the broker's, in PEM form",
            )
    if mqtt.cert_file is None:
        return
    cert, key = mqtt.cert_file, mqtt.key_file
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            str(cert), str(key) if key else None, password=_ask_pass_phrase
        )
    except _Encrypted:
        where = "mqtt.key_file" if key else "mqtt.cert_file"
        ctx.error(
            where,
            f"the private key in {key or cert} is encrypted with a pass phrase, which edgetpud "
            f"cannot type in; store it decrypted with mode 0600 (openssl pkey -in {key or cert} "
            "-out <new file>) and point mqtt.key_file at that",
        )
    except ssl.SSLError as exc:
        ctx.error("mqtt.cert_file", _cert_chain_problem(cert, key, exc))
    except OSError:
        pass  # unreadable here; see the docstring


def _cert_chain_problem(cert: Path, key: Path | None, exc: ssl.SSLError) -> str:
    """Which of the client certificate and its key is wrong, and what to do."""
    try:
        no_cert = _holds_certificate(cert)
    except OSError:
        no_cert = None
    if no_cert is not None:
        why = f"{cert} holds no PEM certificate ({_ssl_reason(no_cert)})"
    elif exc.reason == "KEY_VALUES_MISMATCH":
        why = f"{key or cert} is not the private key of that certificate ({_ssl_reason(exc)})"
    else:
        why = f"{key or cert} holds no PEM private key ({_ssl_reason(exc)})"
    if key is None:
        return (
            f"cannot load the client certificate and its key from {cert}: {why}; put both there "
            "in PEM form, or set mqtt.key_file to the key's file"
        )
    return (
        f"cannot load the client certificate with mqtt.key_file: {why}; check both are PEM "
        "and the key belongs to the certificate"
    )


def _check_secret_file(path: Path, key: str, ctx: Context) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        ctx.error(key, f"{path} cannot be read: {exc.strerror}")
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        ctx.error(
            key,
            f"{path} is readable or writable by group/others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}",
        )


def _check_not_writable_by_others(path: Path) -> None:
    """A config (or its folder) others can write lets them run code as us: refuse it."""
    for p in (path, path.resolve().parent):
        try:
            st = p.stat()
        except OSError:
            continue
        sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_mode & stat.S_IWOTH and not sticky:
            raise ConfigError(
                [
                    ConfigIssue(
                        "",
                        f"{p} is writable by every user (mode {stat.S_IMODE(st.st_mode):04o}); "
                        f"anyone could change what edgetpud runs. Run: chmod o-w {p}",
                    )
                ],
                str(path),
            )
