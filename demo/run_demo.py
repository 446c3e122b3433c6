"""`make demo`: the daemon's story on a machine with no Edge TPU, every step as it happens.

There is no accelerator here, so the demo simulates one: umockdev (run under
`umockdev-wrapper`) makes a Coral USB Accelerator appear in sysfs and /dev, and the test
libedgetpu (tests/native/fake_edgetpu.c, build/libfake_edgetpu.so) answers for it, taking a
few milliseconds per invoke and failing the way the real libedgetpu does. The daemon itself,
its device hosts, mosquitto and the model are real.

The story, with a steady 20 requests/s throughout:
  1. edgetpud starts with no accelerator: the model is served on the CPU;
  2. an accelerator is plugged in: the model moves onto it;
  3. libedgetpu aborts its device host (a failed USB transfer): the host is restarted;
  4. the accelerator is unplugged: the model falls back to the CPU;
and at the end: every request sent was answered.

    umockdev-wrapper python demo/run_demo.py           # what `make demo` runs
    umockdev-wrapper python demo/run_demo.py --models DIR

It reuses the test suite's helpers (tests/support) for the broker, the daemon subprocess,
the fake library's control file and the umockdev testbed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "demo"))


from tests.support.broker import Broker, Subscriber  # noqa: E402
from tests.support.daemon import Daemon, config_toml  # noqa: E402
from tests.support.fakelib import Control  # noqa: E402
from tests.support.umock import in_mock_environment, testbed  # noqa: E402

PREFIX = "demo"
NODE = "demo-box"
BASE = f"{PREFIX}/{NODE}"
MODEL = "classifier"
RATE = 20.0  # requests per second
FAKE_LIB = ROOT / "build" / "libfake_edgetpu.so"
SHARED = ROOT.parent / "shared" / "models"
STEP_TIMEOUT = 60.0


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Story:
    """The broker-side view: what a user subscribed to the daemon's topics sees."""

    def __init__(self, sub: Subscriber, image: bytes) -> None:
        self.sub = sub
        self.image = image
        self.sent: list[str] = []
        self.stop = threading.Event()
        self.sender = threading.Thread(target=self._send, name="demo:sender", daemon=True)

    def _send(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            rid = f"req-{len(self.sent) + 1}"
            self.sent.append(rid)
            self.sub.publish(
                f"{BASE}/models/{MODEL}/infer", self.image, CorrelationData=rid.encode()
            )
            next_at += 1.0 / RATE
            time.sleep(max(0.0, next_at - time.monotonic()))

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.sub.on(f"{BASE}/models/{MODEL}/results")]

    def health(self) -> dict[str, Any]:
        msgs = self.sub.on(f"{BASE}/health")
        return json.loads(msgs[-1].payload) if msgs else {}

    def placement(self) -> list[str]:
        return list(self.health().get("models", {}).get(MODEL, {}).get("devices", []))

    def events(self, kind: str) -> list[dict[str, Any]]:
        out = [json.loads(m.payload) for m in self.sub.on(f"{BASE}/events")]
        return [e for e in out if e.get("event") == kind]

    def progress(self) -> str:
        results = self.results()
        answered = {r.get("request_id") for r in results}
        last = results[-1] if results else {}
        top = last.get("result") or {}
        classes = top if isinstance(top, list) else top.get("classes", [])
        label = f"{classes[0]['label']} {classes[0]['score']:.2f}" if classes else "-"
        return (
            f"    sent {len(self.sent):>4}, answered {len(answered):>4}; "
            f"last result: {label} from {last.get('device', '-')}"
        )

    def wait(self, what: str, check: Callable[[], Any], timeout: float = STEP_TIMEOUT) -> Any:
        """Poll `check` until it returns something true, printing the count every second."""
        deadline = time.monotonic() + timeout
        shown = time.monotonic()
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            if time.monotonic() - shown >= 1.0:
                print(self.progress(), flush=True)
                shown = time.monotonic()
            time.sleep(0.1)
        raise SystemExit(f"demo: gave up after {timeout:.0f} s waiting for {what}")

    def served_from(self, device: str, after: int) -> bool:
        """A result from `device` for a request sent after the first `after` requests."""
        late = {f"req-{i}" for i in range(after + 1, len(self.sent) + 1)}
        return any(
            r.get("device") == device and r.get("request_id") in late for r in self.results()
        )


def linger(story: Story, seconds: float = 3.0) -> None:
    """Let the requests flow for a few seconds, printing the count as it goes up."""
    for _ in range(int(seconds)):
        time.sleep(1.0)
        print(story.progress(), flush=True)


def models_toml(args: argparse.Namespace, work: Path) -> tuple[str, bytes]:
    """The model table and the image every request carries."""
    folder: Path | None = args.models or (SHARED if SHARED.is_dir() else None)
    if folder is not None and (folder / "mobilenet_v1_0.25_128_quant_edgetpu.tflite").is_file():
        say(f"model: Coral's MobileNet v1 from {folder}; every request is cat.bmp")
        return (
            f"""
[models.{MODEL}]
model = "{folder}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
cpu_model = "{folder}/mobilenet_v1_0.25_128_quant.tflite"
labels = "{folder}/imagenet_labels.txt"
queue_size = 1000
[models.{MODEL}.postprocess]
type = "classify"
top_k = 1
""",
            (folder / "cat.bmp").read_bytes(),
        )
    raise SystemExit(
        "demo: the story needs a model compiled for the Edge TPU and its CPU build: Coral's\n"
        "  mobilenet_v1_0.25_128_quant{,_edgetpu}.tflite, imagenet_labels.txt and cat.bmp\n"
        f"  (github.com/google-coral/test_data). Not found in {folder or SHARED}: put them there\n"
        "  or run `make demo MODELS=DIR`. (demo/colour_model.py is a CPU build: edgetpud keeps\n"
        "  it on the CPU, so no accelerator could take it over.)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", type=Path, help="folder with Coral's MobileNet and cat.bmp")
    args = ap.parse_args()
    if args.models:
        args.models = args.models.resolve()
    if not in_mock_environment():
        sys.exit(
            "demo: run me under umockdev-wrapper (make demo does): it simulates the USB device"
        )
    if not FAKE_LIB.is_file():
        sys.exit(f"demo: {FAKE_LIB} is missing: make build/libfake_edgetpu.so (make demo does)")
    started = time.monotonic()
    print(
        "\nThis machine has no Edge TPU: THE ACCELERATORS IN THIS DEMO ARE SIMULATED.\n"
        "umockdev fakes a Coral USB Accelerator in sysfs and /dev, and a stand-in libedgetpu\n"
        "(tests/native/fake_edgetpu.c) runs its invokes and fails the way the real one does;\n"
        "it runs no model, so the scores it returns are made up (the CPU's are real).\n"
        "edgetpud, its device hosts, mosquitto and the MQTT traffic are real.\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="edgetpud-demo-") as tmp:
        work = Path(tmp)
        (work / "state").mkdir()
        control = Control(work / "fake-edgetpu.control")
        control.set(mode="simulate", invoke_ms=3)
        models, image = models_toml(args, work)
        with testbed() as tb, Broker(work, max_queued_messages=0) as broker:
            sub = Subscriber(broker, [f"{PREFIX}/#"]).start()
            story = Story(sub, image)
            text = config_toml(
                node=NODE,
                state_dir=work / "state",
                port=broker.port,
                prefix=PREFIX,
                daemon='stall_timeout = "1500ms"\ndrain_timeout = "10s"\n',
                devices='firmware_debounce = "1s"\nquarantine_backoff = "2s"\n',
                rest=f'[runtime]\nlibrary = "{FAKE_LIB}"\ncpu_fallback = true\n{models}',
            )
            daemon = Daemon(work / "daemon", text, env=control.env())
            try:
                say(
                    f"mosquitto on 127.0.0.1:{broker.port}; starting edgetpud (log {daemon.log_path})"
                )
                daemon.start()
                daemon.wait_ready()
                assert daemon.proc is not None
                daemon_pid = daemon.proc.pid
                status = [s[7:] for s in daemon.said("STATUS=")]
                say(f"edgetpud is READY (systemd status: {status[-1] if status else '-'})")
                where = story.wait("the model's placement in health", story.placement)
                say(f"step 1. no accelerator yet: health places {MODEL} on {where}")
                say(f"sending {RATE:.0f} requests/s from now until the end")
                story.sender.start()
                story.wait("results from the CPU", lambda: story.served_from("cpu", 0))
                linger(story)

                say("step 2. a (simulated) Coral USB Accelerator is plugged into bus 2, port 1")
                root = tb.add_root_hub(2, 5000, maxchild=4)
                accelerator = tb.add_accelerator(root, 1)
                where = story.wait(
                    "the model on usb:2-1",
                    lambda: "usb:2-1" in story.placement() and story.placement(),
                )
                say(f"health places {MODEL} on {where}")
                mark = len(story.sent)
                story.wait("results from usb:2-1", lambda: story.served_from("usb:2-1", 0))
                host = story.wait(
                    "its device host",
                    lambda: (
                        (h := story.health().get("hosts", {}).get("usb:2-1", {})).get("pid") and h
                    ),
                )
                say(f"results now come from usb:2-1; its device host is pid {host.get('pid')}")
                linger(story)

                say(
                    "step 3. libedgetpu fails a USB transfer during an invoke and aborts its process"
                )
                control.set(abort_invoke="2-1", once=1)
                died = story.wait("a host_died event", lambda: story.events("host_died"))
                say(f"event host_died: {died[0].get('reason', died[0])}")
                mark = len(story.sent)
                restarted = story.wait(
                    "the host restarted",
                    lambda: (
                        (h := story.health().get("hosts", {}).get("usb:2-1", {})).get("restarts", 0)
                        >= 1
                        and h.get("pid")
                        and h
                    ),
                )
                say(
                    f"health: host for usb:2-1 restarted (pid {restarted.get('pid')}, "
                    f"restarts {restarted.get('restarts')}, last exit: {restarted.get('last_exit')})"
                )
                story.wait("results from usb:2-1 again", lambda: story.served_from("usb:2-1", mark))
                say(f"results come from usb:2-1 again; edgetpud itself (pid {daemon_pid}) ran on")
                linger(story)

                say("step 4. the accelerator is unplugged")
                tb.unplug(accelerator)
                mark = len(story.sent)
                where = story.wait(
                    "the model back on the CPU",
                    lambda: (
                        story.placement()
                        and "usb:2-1" not in story.placement()
                        and story.placement()
                    ),
                )
                say(f"health places {MODEL} on {where}")
                story.wait("results from the CPU again", lambda: story.served_from("cpu", mark))
                say("results come from the CPU again")
                linger(story)

                story.stop.set()
                story.sender.join(5)
                say(f"stopped sending; waiting for the last of {len(story.sent)} results")
                sent = set(story.sent)
                story.wait(
                    "every result",
                    lambda: sent <= {r.get("request_id") for r in story.results()},
                    timeout=30,
                )
                time.sleep(0.5)  # a duplicate would arrive right behind
                results = story.results()
                answered = {r.get("request_id") for r in results} & sent
                errors = [r for r in results if "error" in r]
                by_device: dict[str, int] = {}
                for r in results:
                    by_device[r.get("device", "?")] = by_device.get(r.get("device", "?"), 0) + 1
                same = daemon.proc.pid == daemon_pid and daemon.proc.poll() is None
                say(f"edgetpud pid {daemon_pid} served throughout: {'yes' if same else 'NO'}")
                code = daemon.stop()
                say(f"edgetpud stopped with exit code {code}")
                print(
                    f"\n{len(sent)} sent, {len(answered)} answered, {len(sent - answered)} lost"
                    f" ({len(results) - len(answered)} answered twice, {len(errors)} errors;"
                    f" by device: {by_device}) in {time.monotonic() - started:.1f} s",
                    flush=True,
                )
                ok = (
                    same
                    and code == 0
                    and answered == sent
                    and not errors
                    and len(results) == len(sent)
                )
                return 0 if ok else 1
            finally:
                story.stop.set()
                control.set(abort_invoke=None, once=None)
                daemon.close()
                sub.stop()


if __name__ == "__main__":
    sys.exit(main())
