"""Shared pieces of the benchmark suite: machine facts, result files, tables, and a rig.

A `Rig` is what the end-to-end tests use, reused here by import (tests/support): a
umockdev testbed of K USB accelerators, the fake libedgetpu in simulate mode (every
invoke sleeps `invoke_ms`, plus `swap_ms` when the caching token changes on a device),
a real mosquitto, and `edgetpud run` as a subprocess. A `Tap` is a `mosquitto_sub`
process (C, so counting costs the daemon no CPU) that writes one line per message with
its arrival time.

Every benchmark module has `run(quick: bool) -> dict` (the record written to
bench/results/<name>.json) and a `main()` for running it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
MODELS = Path(os.environ.get("EDGETPUD_MODELS", ROOT.parent / "shared" / "models"))
FAKE_LIB = ROOT / "build" / "libfake_edgetpu.so"
PREFIX = "bench"
NODE = "box"
BASE = f"{PREFIX}/{NODE}"
INVOKE_MS = 2.6  # Coral USB Accelerator (USB 3), MobileNet v2 224: the published figure
MODEL_128 = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
LABELS = "imagenet_labels.txt"


def ensure_umockdev() -> None:
    """Re-run this process under umockdev-wrapper unless it already is."""
    if "umockdev" in os.environ.get("LD_PRELOAD", ""):
        return
    wrapper = shutil.which("umockdev-wrapper")
    if wrapper is None:
        sys.exit(
            "umockdev-wrapper not found: install the Debian package umockdev (make bench does)"
        )
    os.execv(wrapper, [wrapper, *this_command()])


def this_command() -> list[str]:
    """The command line that started this process: `python -m bench.<name> ...` again."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:  # run as a file, not as a module
        return [sys.executable, *sys.argv]
    name = spec.name.removesuffix(".__main__")
    return [sys.executable, "-m", name, *sys.argv[1:]]


def module(name: str) -> list[str]:
    """The command that runs bench module `name` (e.g. "bench.plain_script") in a new
    process; run it with cwd=ROOT (or ROOT on PYTHONPATH) so that `bench` is found."""
    return [sys.executable, "-m", name]


def check_inputs() -> None:
    if not FAKE_LIB.is_file():
        sys.exit(f"{FAKE_LIB} is missing: run `make build/libfake_edgetpu.so` (make bench does)")
    if not (MODELS / MODEL_128).is_file():
        sys.exit(f"{MODELS / MODEL_128} is missing: set EDGETPUD_MODELS to ../shared/models")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_ticks() -> tuple[int, int]:
    """(all CPU ticks, ticks stolen by the hypervisor) since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def steal_pct(since: tuple[int, int]) -> float | None:
    """Share of CPU time the hypervisor gave to other guests since `since` (a VM's noise)."""
    total, steal = cpu_ticks()
    return round(100.0 * (steal - since[1]) / (total - since[0]), 1) if total > since[0] else None


def machine() -> dict[str, Any]:
    """Facts that make a figure comparable: cores, CPU, load right now, versions."""
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "tflite_runtime": _version("tflite-runtime"),
        "paho_mqtt": _version("paho-mqtt"),
        "mosquitto": _mosquitto_version(),
    }


def _mosquitto_version() -> str:
    from tests.support.broker import MOSQUITTO

    try:
        out = subprocess.run(
            [MOSQUITTO, "-h"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.replace("mosquitto version", "").strip() or "unknown"


def write_record(name: str, record: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def new_record(name: str, quick: bool, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": f"edgetpud.bench.{name}/1",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick,
        "machine": machine(),
        "params": params,
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table (also valid Markdown)."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


# -- the rig -------------------------------------------------------------------------------


def model_table(
    name: str,
    model: str,
    *,
    device: str = "any",
    source: str = "",
    postprocess: str = 'type = "classify"\ntop_k = 3',
    labels: bool = True,
    extra: str = "",
) -> str:
    """One `[models.<name>]` table; `source` is the body of its source table (empty: none)."""
    text = f'[models.{name}]\nmodel = "{MODELS / model}"\ndevice = "{device}"\n'
    if labels:
        text += f'labels = "{MODELS / LABELS}"\n'
    text += extra
    if source:
        text += f"[models.{name}.source]\n{source}\n"
    if postprocess:
        text += f"[models.{name}.postprocess]\n{postprocess}\n"
    return text


@dataclass
class Rig:
    """A testbed, a broker, the fake library's control file and daemons, in one temp dir."""

    tmp: Path
    tb: Any
    broker: Any
    control: Any
    accelerators: list[str] = field(default_factory=list)
    daemons: list[Any] = field(default_factory=list)
    taps: list[Tap] = field(default_factory=list)

    def add_accelerators(self, count: int, bus: int = 2) -> list[str]:
        """`count` ready USB 3 accelerators on their own root hub; returns identities."""
        root = self.tb.add_root_hub(bus, 5000, maxchild=max(count, 1))
        out = []
        for port in range(1, count + 1):
            path = self.tb.add_accelerator(root, port)
            self.accelerators.append(path)
            out.append(f"usb:{bus}-{port}")
        return out

    def config(self, models: str, *, qos: int = 0, extra: str = "", debounce: str = "300ms") -> str:
        from tests.support.daemon import config_toml

        return config_toml(
            node=NODE,
            state_dir=self.tmp / "state",
            port=self.broker.port,
            prefix=PREFIX,
            library=FAKE_LIB,
            daemon='stall_timeout = "5s"\ndrain_timeout = "5s"\nlog_level = "warning"\n',
            mqtt=f"qos = {qos}\n",
            devices=f'firmware_debounce = "{debounce}"\n',
            rest=f"{extra}\n{models}",
        )

    def daemon(self, models: str, *, qos: int = 0, extra: str = "", debounce: str = "300ms") -> Any:
        from tests.support.daemon import Daemon

        d = Daemon(
            self.tmp / f"daemon{len(self.daemons)}",
            self.config(models, qos=qos, extra=extra, debounce=debounce),
            env=self.control.env(),
        )
        self.daemons.append(d)
        d.start()
        d.wait_ready(timeout=120)
        return d

    def tap(self, topic: str, *, qos: int = 0, payload: bool = False) -> Tap:
        t = Tap(self.broker, topic, self.tmp / f"tap{len(self.taps)}.txt", qos, payload)
        self.taps.append(t)
        return t

    def close(self) -> None:
        for t in self.taps:
            t.stop()
        for d in self.daemons:
            with suppress(AssertionError):
                d.stop(timeout=30)
            d.close()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and every living descendant (the
    daemon and its device hosts), plus what its reaped children used (cutime/cstime)."""
    return sum(cpu_split_s(pid))


def processes() -> dict[int, list[str]]:
    """Every process now running: pid -> the fields of /proc/<pid>/stat after its name
    (fields[0] the state, fields[1] the parent's pid)."""
    out: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            out[int(entry)] = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
    return out


def cpu_split_s(pid: int) -> tuple[float, float]:
    """(CPU seconds of `pid` itself, of its descendants living or reaped), user + system."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {p: (int(fields[1]), fields) for p, fields in processes().items()}
    own = children = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        if current not in stats:
            continue
        fields = stats[current][1]
        # fields[11:15] are utime, stime, cutime, cstime (stat fields 14-17)
        ticks = [int(x) for x in fields[11:15]]
        if current == pid:
            own += ticks[0] + ticks[1]
            children += ticks[2] + ticks[3]
        else:
            children += sum(ticks)
        todo.extend(child for child, (ppid, _) in stats.items() if ppid == current)
    return own / tick, children / tick


@contextmanager
def rig(invoke_ms: float = INVOKE_MS, swap_ms: float = 0.0) -> Iterator[Rig]:
    from tests.support.broker import Broker
    from tests.support.fakelib import Control
    from tests.support.umock import testbed

    tmp = Path(tempfile.mkdtemp(prefix="edgetpud-bench."))
    (tmp / "state").mkdir()
    control = Control(tmp / "fake_edgetpu.control")
    # unplug aborts the device host holding the device, as libedgetpu does (#21)
    control.set(mode="simulate", invoke_ms=invoke_ms, swap_ms=swap_ms)
    try:
        # the broker writes each message at once (no Nagle), as docs/mqtt.md advises;
        # BENCH_NODELAY=0 measures mosquitto's default instead
        nodelay = os.environ.get("BENCH_NODELAY", "1") == "1"
        # and announces no Receive Maximum (docs/mqtt.md, "Throughput at QoS 1")
        broker = Broker(tmp, max_queued_messages=0, max_inflight_messages=0, nodelay=nodelay)
        with testbed() as tb, broker:
            r = Rig(tmp, tb, broker, control)
            try:
                yield r
            finally:
                r.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Tap:
    """`mosquitto_sub` writing "<unix time> <topic>[ <payload>]" per message to a file."""

    def __init__(self, broker: Any, topic: str, path: Path, qos: int, payload: bool) -> None:
        self.path = path
        fmt = "%U %t %p" if payload else "%U %t"
        self._out = path.open("wb")
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", topic,
             "-q", str(qos), "-F", fmt, "-V", "5"],
            stdout=self._out, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.3)  # let it subscribe before anything is published

    def lines(self) -> list[tuple[float, str, str]]:
        """(arrival time, topic, payload) for every message so far (a partial last line is left)."""
        self._out.flush()
        out = []
        for raw in self.path.read_bytes().split(b"\n")[:-1]:
            parts = raw.decode(errors="replace").split(" ", 2)
            if len(parts) >= 2:
                out.append((float(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""))
        return out

    def count(self) -> int:
        return self.path.read_bytes().count(b"\n")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        self._out.close()


def rate_between(times: Sequence[float], t0: float, t1: float) -> float:
    """Messages per second that arrived within [t0, t1) (wall-clock times)."""
    n = sum(1 for t in times if t0 <= t < t1)
    return n / (t1 - t0) if t1 > t0 else 0.0


def health(tap: Tap) -> dict[str, Any]:
    """The last health snapshot a payload tap on `…/health` saw."""
    for _, topic, payload in reversed(tap.lines()):
        if topic.endswith("/health"):
            try:
                data: dict[str, Any] = json.loads(payload)
                return data
            except json.JSONDecodeError:
                continue
    return {}


def main(doc: str | None, run: Callable[[bool], object]) -> int:
    """The command line every benchmark module shares: `[--quick]`, checks, then `run`."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the short variant (bench-quick)")
    args = p.parse_args()
    check_inputs()
    ensure_umockdev()
    run(args.quick)
    return 0
