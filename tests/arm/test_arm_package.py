"""The arm64 and armhf packages, installed and serving in emulated bookworm systems.

Most USB Accelerators hang off a Raspberry Pi. `make test-arm` builds the packages,
and for each architecture this test unpacks a fresh bookworm userland (debootstrap,
cached), runs `apt install ./edgetpud_*_<arch>.deb` in it with the dependencies from
the Debian mirror, writes a config with Coral's CPU MobileNet, starts the installed
`/usr/bin/edgetpud run` under qemu-user, sends cat.bmp over MQTT to a mosquitto on
this machine's loopback and checks the classification. `edgetpud check-config` and
`edgetpud doctor` run there too.

Not collected by `make test` (tests/conftest.py): it needs root, binfmt_misc and
several minutes per architecture.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.broker import Broker, Subscriber
from tests.support.chroot import Chroot
from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEB_DIR = Path(os.environ.get("EDGETPUD_DEB_DIR", ROOT / "build" / "deb"))
ARCHES = os.environ.get("EDGETPUD_ARM_ARCHES", "arm64 armhf").split()
CPU_MODEL = "mobilenet_v1_0.25_128_quant.tflite"
CATS = set(range(282, 295))  # ImageNet cat classes (background at 0)

pytestmark = pytest.mark.timeout(3600)


def the_deb(arch: str) -> Path:
    debs = sorted(DEB_DIR.glob(f"edgetpud_*_{arch}.deb"))
    assert debs, f"no edgetpud_*_{arch}.deb in {DEB_DIR}: run `make deb` (make test-arm does)"
    return debs[-1]


@pytest.mark.parametrize("arch", ARCHES)
def test_installed_package_classifies_a_cat_over_mqtt(
    arch: str, tmp_path: Path, models_dir: Path
) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    with Chroot(arch, tmp_path) as box, Broker(tmp_path) as broker:
        timings["unpack"] = time.monotonic() - started
        mark = time.monotonic()
        box.install_deb(the_deb(arch))
        timings["apt install"] = time.monotonic() - mark
        uname = box.run(["uname", "-m"]).stdout.strip()
        assert uname in ("aarch64", "armv7l", "armv8l"), uname
        box.bind(models_dir, "/srv/models")
        box.write(
            "/etc/edgetpud/edgetpud.toml",
            f"""
[daemon]
node_id = "pi-{arch}"
state_dir = "/var/lib/edgetpud"

[mqtt]
host = "127.0.0.1"
port = {broker.port}

[models.cat]
model = "/srv/models/{CPU_MODEL}"
labels = "/srv/models/imagenet_labels.txt"
device = "cpu"
[models.cat.postprocess]
type = "classify"
top_k = 3
""",
        )
        check = box.run(["/usr/bin/edgetpud", "check-config", "/etc/edgetpud/edgetpud.toml"])
        assert check.returncode == 0, check.stdout + check.stderr
        doctor = box.run(
            ["/usr/bin/edgetpud", "doctor", "--json", "--config", "/etc/edgetpud/edgetpud.toml"],
            check=False,
        )
        assert "Traceback" not in doctor.stdout + doctor.stderr, doctor.stderr
        report = json.loads(doctor.stdout)
        checks = {c["check"]: c for c in report["checks"]}
        print(f"edgetpud doctor on {arch}:")
        for c in report["checks"]:
            print(f"  {c['status']:<4} {c['check']}: {c['detail']}")
        # The runtime comes with the package, and the CPU model opens with it; no Edge
        # TPU, libedgetpu, service user or broker check can pass in a bare chroot.
        assert checks["config"]["status"] == "OK", checks["config"]
        assert checks["tflite runtime"]["status"] == "OK", checks["tflite runtime"]
        assert checks["model cat"]["status"] == "OK", checks["model cat"]

        results = f"edgetpud/pi-{arch}/models/cat/results"
        health = f"edgetpud/pi-{arch}/health"
        with Subscriber(broker, [results, f"edgetpud/pi-{arch}/status", health]) as sub:
            log = tmp_path / f"daemon-{arch}.log"
            mark = time.monotonic()
            proc = box.popen(
                ["/usr/bin/edgetpud", "run", "--config", "/etc/edgetpud/edgetpud.toml"], log
            )
            try:

                def online() -> bool:
                    if proc.poll() is not None:
                        raise AssertionError(f"daemon exited {proc.returncode}:\n{log.read_text()}")
                    return any(m.payload == b"online" for m in sub.messages)

                def serving() -> bool:
                    docs = [json.loads(m.payload) for m in sub.on(health)]
                    return bool(docs) and docs[-1]["models"]["cat"]["state"] == "running"

                wait_for(online, 600, f"the {arch} daemon online\n{log.read_text()[-2000:]}")
                # as a client would: send once the retained health says the model runs
                wait_for(serving, 600, f"cat running on {arch}\n{log.read_text()[-2000:]}")
                timings["start to online"] = time.monotonic() - mark
                mark = time.monotonic()
                sub.publish(
                    f"edgetpud/pi-{arch}/models/cat/infer", (models_dir / "cat.bmp").read_bytes()
                )
                (msg,) = sub.wait_for(results, timeout=600)
                timings["request to result"] = time.monotonic() - mark
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=30)
        body = json.loads(msg.payload)
        assert body["schema"] == "edgetpud.result/1", json.dumps(body)
        classes = body["result"]
        assert any(c["id"] in CATS and "cat" in c["label"] for c in classes), body
        assert proc.returncode == 0, log.read_text()[-3000:]
    timings["total"] = time.monotonic() - started
    print(f"{arch}: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
