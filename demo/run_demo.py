"""`make demo`: the whole daemon, end to end, on a machine with no Edge TPU.

Starts a private mosquitto on a free loopback port, writes the demo model (an
image's dominant colour) with demo/colour_model.py, runs `edgetpud run` with a
config whose model falls back to the CPU, waits for systemd-style READY=1, sends
images as MQTT requests, prints each result as it arrives, then stops everything
cleanly (SIGTERM: the daemon drains, publishes `offline` and exits 0).

    python demo/run_demo.py                 # the colour model and generated images
    python demo/run_demo.py --models DIR    # also Coral's MobileNet on DIR's .bmp images
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import colour_model

PREFIX = "demo"
NODE = "demo-box"
READY_TIMEOUT = 60.0
RESULT_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        sys.exit("mosquitto is not installed: apt-get install mosquitto (make demo installs it)")
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"mosquitto did not start on port {port}")


def demo_images(folder: Path) -> list[tuple[str, Path]]:
    """A few pictures whose dominant colour a person can see at a glance."""
    rng = np.random.default_rng(7)
    out = []
    for name, rgb in [("tomato", (200, 40, 35)), ("sky", (60, 90, 210)), ("lawn", (50, 160, 60)),
                      ("banana", (235, 210, 60)), ("night", (20, 20, 25))]:  # fmt: skip
        pixels = np.clip(rng.normal(rgb, 18, (120, 160, 3)), 0, 255).astype(np.uint8)
        pixels[40:80, 60:100] = 255 - pixels[40:80, 60:100]  # a contrasting square: not flat
        path = folder / f"{name}.png"
        Image.fromarray(pixels).save(path)
        out.append(("colours", path))
    return out


def write_config(work: Path, port: int, models: dict[str, dict[str, Any]]) -> Path:
    lines = [
        "[daemon]",
        f'node_id = "{NODE}"',
        f'state_dir = "{work / "state"}"',
        'health_interval = "2s"',
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f'topic_prefix = "{PREFIX}"',
        "[runtime]",
        "cpu_fallback = true",
    ]
    for name, table in models.items():
        lines.append(f"[models.{name}]")
        lines += [
            f'{k} = "{v}"' if isinstance(v, (str, Path)) else f"{k} = {v}"
            for k, v in table.items()
            if k != "postprocess"
        ]
        lines.append(f"[models.{name}.postprocess]")
        lines += [
            f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}"
            for k, v in table["postprocess"].items()
        ]
    (work / "state").mkdir(exist_ok=True)
    path = work / "edgetpud.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_client(client_id: str) -> mqtt.Client:
    try:
        from paho.mqtt.enums import CallbackAPIVersion

        return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    except ImportError:  # paho-mqtt 1.6 (Debian 12)
        return mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)


def wait_ready(sock: socket.socket, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            sys.exit(f"edgetpud exited with {daemon.returncode} before it was ready")
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        for line in data.splitlines():
            if line.startswith("STATUS="):
                print(f"  systemd status: {line[7:]}")
        if "READY=1" in data.splitlines():
            return
    sys.exit("edgetpud did not report READY=1 in time")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--models", type=Path, help="folder with Coral's MobileNet models and .bmp images"
    )
    args = ap.parse_args()
    if args.models:
        args.models = args.models.resolve()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgetpud-demo-") as tmp:
        work = Path(tmp)
        broker, port = start_broker(work)
        daemon: subprocess.Popen[bytes] | None = None
        try:
            model, labels = colour_model.write(work / "models")
            models: dict[str, dict[str, Any]] = {
                "colours": {
                    "model": model, "cpu_model": model, "labels": labels,
                    "postprocess": {"type": "classify", "top_k": 1},
                },
            }  # fmt: skip
            requests = demo_images(work)
            if args.models:
                mobilenet = args.models / "mobilenet_v1_0.25_128_quant.tflite"
                if not mobilenet.is_file():
                    sys.exit(f"{mobilenet} not found; --models must name Coral's test-data folder")
                tpu_build = args.models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
                models["mobilenet"] = {
                    "model": tpu_build if tpu_build.is_file() else mobilenet,
                    "cpu_model": mobilenet,
                    "labels": args.models / "imagenet_labels.txt",
                    "postprocess": {"type": "classify", "top_k": 3},
                }
                requests += [("mobilenet", p) for p in sorted(args.models.glob("*.bmp"))]
            cfg = write_config(work, port, models)
            print(f"mosquitto on 127.0.0.1:{port}; config {cfg}")
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(str(work / "notify.sock"))
            notify.settimeout(0.5)
            env = dict(os.environ, NOTIFY_SOCKET=str(work / "notify.sock"))
            daemon = subprocess.Popen(
                [sys.executable, "-m", "edgetpud", "run", "--config", str(cfg)], env=env
            )
            wait_ready(notify, daemon)
            print(
                f"edgetpud is READY after {time.monotonic() - started:.1f} s; sending {len(requests)} images"
            )
            results: dict[str, Any] = {}
            done = threading.Event()
            sent: dict[str, str] = {}

            def on_message(client: Any, userdata: Any, msg: Any) -> None:
                payload = json.loads(msg.payload)
                rid = payload.get("request_id", "?")
                results[rid] = payload
                image = sent.get(rid, rid)
                output = payload.get("result") or {}
                classes = output if isinstance(output, list) else output.get("classes", [])
                top = (
                    ", ".join(f"{c['label']} {c['score']:.2f}" for c in classes)
                    or payload.get("error")
                    or payload.get("reason", "?")
                )
                timing = payload.get("timing", {})
                print(
                    f"  {image:<16} → {top:<40} ({payload.get('device', '?')}, invoke {timing.get('invoke_ms', 0):.1f} ms)"
                )
                if len(results) >= len(requests):
                    done.set()

            client = make_client("edgetpud-demo")
            client.on_message = on_message
            client.connect("127.0.0.1", port)
            for name in models:
                client.subscribe(f"{PREFIX}/{NODE}/models/{name}/results", qos=1)
            client.loop_start()
            time.sleep(0.3)
            for i, (name, path) in enumerate(requests):
                rid = f"demo-{i}"
                sent[rid] = path.name
                client.publish(f"{PREFIX}/{NODE}/models/{name}/infer", path.read_bytes(), qos=1,
                               properties=_request_properties(rid))  # fmt: skip
            if not done.wait(RESULT_TIMEOUT):
                print(f"only {len(results)} of {len(requests)} results arrived", file=sys.stderr)
                return 1
            client.loop_stop()
            client.disconnect()
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(30)
            print(
                f"edgetpud stopped (exit {code}); {len(results)} results in {time.monotonic() - started:.1f} s"
            )
            return 0 if code == 0 else 1
        finally:
            if daemon is not None and daemon.poll() is None:
                daemon.kill()
            broker.terminate()
            broker.wait(5)


def _request_properties(request_id: str) -> Any:
    """An MQTT 5 user property carrying our request id (ignored by 3.1.1 brokers)."""
    try:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
    except ImportError:
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("request_id", request_id)]
    return props


if __name__ == "__main__":
    sys.exit(main())
