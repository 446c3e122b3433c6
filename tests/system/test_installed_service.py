"""The built package in a booted Debian 12 container, under systemd 252 and the full sandbox.

Follows README's Install section and docs/install.md step by step, as root on a fresh
minimal bookworm: `apt install ./edgetpud_<version>_amd64.deb` (dependencies from the
configured Debian mirror; no pip, no other repository), put the config in place,
`edgetpud check-config`, `systemctl reload edgetpud`, `edgetpud doctor`. Then: a CPU model
answers an MQTT request (mosquitto runs on the host's loopback, which the container
shares); a bad config on reload keeps the old one; `systemctl stop` publishes `offline`;
`apt purge` leaves none of the package's files. The tests run in file order on one
container (module scope), each step building on the one before, as a user's session does.

Run with `make test-system` (root; about 4 minutes with the bootstrap cached).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import container as ct
from tests.support.broker import Broker, Subscriber
from tests.support.polling import wait_for

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("EDGETPUD_SYSTEM_TESTS") != "1",
        reason="boots a Debian container: run `make test-system` (root)",
    ),
    pytest.mark.timeout(900),
]

ROOT = Path(__file__).resolve().parents[2]
CPU_MODEL = "mobilenet_v1_0.25_128_quant.tflite"
MODELS = "/srv/edgetpud/models"  # where docs/install.md tells users to keep models
CONFIG = "/etc/edgetpud/edgetpud.toml"
NODE = "systest"
BASE = f"edgetpud/{NODE}"
TIMES: dict[str, float] = {}


def _timed(name: str, started: float) -> None:
    TIMES[name] = round(time.monotonic() - started, 2)
    print(f"{name}: {TIMES[name]} s")


@pytest.fixture(scope="module")
def deb() -> Path:
    """The amd64 package `make test-system` built (make deb DEB_ARCHES=amd64)."""
    found = sorted((ROOT / "build" / "deb").glob("edgetpud_*_amd64.deb"))
    if len(found) != 1:
        pytest.fail(
            f"expected one build/deb/edgetpud_*_amd64.deb, found {found}: run make test-system"
        )
    return found[0]


@pytest.fixture(scope="module")
def box(deb: Path) -> Iterator[ct.Container]:
    from tests.conftest import SHARED_MODELS

    started = time.monotonic()
    base, made = ct.base()
    TIMES["bootstrap (debootstrap, 0 when cached)"] = round(made, 1)
    archives = ct.CACHE / "apt-archives"  # downloaded .debs, kept between runs
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    box = ct.Container(
        base,
        "edgetpud-systest",
        [(SHARED_MODELS, MODELS, True), (archives, "/var/cache/apt/archives", False)],
    )
    try:
        TIMES["copy of the bootstrap"] = round(box.copy_seconds, 1)
        TIMES["boot to running"] = round(box.wait_booted(), 1)
        shutil.copy(deb, box.root / "root" / deb.name)
        _timed("container ready", started)
        yield box
    finally:
        (ROOT / "build" / "test-system-times.json").write_text(json.dumps(TIMES, indent=1) + "\n")
        if box.leader:
            journal = box.run(
                ["journalctl", "-u", "edgetpud", "--no-pager", "-n", "80"], check=False
            )
            print(journal.stdout[-6000:])
        box.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="module")
def sub(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker, [f"{BASE}/#"]).start()
    yield s
    s.stop()


def show(box: ct.Container, *props: str) -> dict[str, str]:
    out = box.run(["systemctl", "show", "edgetpud", *(f"--property={p}" for p in props)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def config_text(broker: Broker, labels: bool = True) -> str:
    label_line = f'labels = "{MODELS}/imagenet_labels.txt"\n' if labels else ""
    return f"""# written by the system test, as a user edits the example
[daemon]
node_id = "{NODE}"

[mqtt]
host = "127.0.0.1"
port = {broker.port}

[models.cat]
model = "{MODELS}/{CPU_MODEL}"
{label_line}device = "cpu"

[models.cat.postprocess]
type = "classify"
top_k = 3
"""


def test_apt_install_creates_group_apex_before_udev_sees_the_rules(
    box: ct.Container, deb: Path
) -> None:
    # udev is not running in a container; a udevadm that records whether group apex
    # exists when the postinst calls it stands in for it (udev resolves GROUP= names
    # when it reads the rules, so the group must exist by then). /usr/sbin, because apt
    # runs dpkg with PATH=/usr/sbin:/usr/bin:/sbin:/bin (DPkg::Path); udev is not installed.
    box.run(["mkdir", "-p", "/run/udev"])
    box.write(
        "/usr/sbin/udevadm",
        "#!/bin/sh\n{ printf '%s: ' \"$*\"; getent group apex || echo 'no group apex'; }"
        " >> /run/udevadm-calls.log\n",
        0o755,
    )
    started = time.monotonic()
    # README's commands as they are (apt, not apt-get; -y only because no one answers)
    box.run(["apt", "update"], timeout=600)
    box.run(["apt", "install", "-y", f"./{deb.name}"], timeout=900)
    box.run(["mkdir", "-p", MODELS])
    _timed("apt install ./edgetpud_*_amd64.deb (with dependencies)", started)
    calls = box.run(["cat", "/run/udevadm-calls.log"]).stdout.splitlines()
    print(*calls, sep="\n")
    assert calls and calls[0].startswith("control --reload-rules: apex:"), calls
    assert not [c for c in calls if "no group apex" in c], calls
    box.run(["rm", "/usr/sbin/udevadm", "/run/udevadm-calls.log"])


def test_the_service_is_active_and_ready_under_the_units_sandbox(box: ct.Container) -> None:
    state = wait_for(
        lambda: (
            (s := show(box, "ActiveState", "SubState", "StatusText", "Type", "MainPID"))[
                "StatusText"
            ]
            and s
        ),
        60,
        "STATUS= from the service",
        interval=0.2,  # each look runs systemctl in the container
    )
    print(state)
    assert state["Type"] == "notify"
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")  # READY=1 seen
    # the example config declares no models; the runtime came with the package
    assert state["StatusText"].startswith("no models; mqtt "), state
    assert "no TFLite runtime" not in state["StatusText"]
    sandbox = show(box, "ProtectSystem", "User", "DevicePolicy", "NoNewPrivileges")
    assert sandbox == {
        "ProtectSystem": "strict",
        "User": "edgetpud",
        "DevicePolicy": "closed",
        "NoNewPrivileges": "yes",
    }


def test_reload_applies_the_users_config_and_a_cpu_model_answers_over_mqtt(
    box: ct.Container, broker: Broker, sub: Subscriber, models_dir: Path
) -> None:
    pid = show(box, "MainPID")["MainPID"]
    box.write(CONFIG, config_text(broker))
    box.run(["edgetpud", "check-config", CONFIG])
    started = time.monotonic()
    box.run(["systemctl", "reload", "edgetpud"])
    wait_for(
        lambda: show(box, "StatusText")["StatusText"] == "1 model on CPU; mqtt connected",
        90,
        "STATUS=1 model on CPU; mqtt connected",
        interval=0.2,
    )
    _timed("reload to serving", started)
    assert show(box, "MainPID")["MainPID"] == pid, "a reload must not restart the service"
    wait_for(lambda: sub.on(f"{BASE}/status"), 30, "the retained status")
    assert sub.on(f"{BASE}/status")[-1].payload == b"online"

    started = time.monotonic()
    sub.publish(f"{BASE}/models/cat/infer", (models_dir / "cat.bmp").read_bytes())
    (message,) = sub.wait_for(f"{BASE}/models/cat/results", 1, timeout=60)
    _timed("first MQTT request answered", started)
    result = json.loads(message.payload)
    print(result)
    assert result["result"][0]["label"] == "Egyptian cat"
    assert result["device"] == "cpu"
    health = json.loads(sub.on(f"{BASE}/health")[-1].payload)
    assert health["runtime"]["tflite"] == {"name": "tflite_runtime", "version": "2.14.0"}
    assert "libedgetpu1-std" in health["runtime"]["libedgetpu"]["error"]  # none installed


def test_doctor_shows_every_check_and_a_staged_missing_runtime(
    box: ct.Container, deb: Path
) -> None:
    proc = box.run(["edgetpud", "doctor"], check=False)
    print(proc.stdout, proc.stderr)
    lines = proc.stdout.splitlines()
    for check in ("config", "tflite runtime", "libedgetpu", "udev rules", "service user",
                  "accelerators", "model cat", "broker"):  # fmt: skip
        assert any(line[5:].startswith(f"{check}: ") for line in lines), (check, lines)
    assert "OK   tflite runtime: tflite_runtime 2.14.0 (/usr/lib/edgetpud/python/" in proc.stdout
    assert "OK   udev rules: /lib/udev/rules.d/60-edgetpud.rules" in proc.stdout
    assert "OK   model cat:" in proc.stdout and "OK   broker:" in proc.stdout
    assert proc.returncode == 0, proc.stdout  # libedgetpu and accelerators only WARN

    # stage the fault: the runtime gone from the package's folder
    box.run(["mv", "/usr/lib/edgetpud/python/tflite_runtime", "/root/tflite_runtime.away"])
    broken = box.run(["edgetpud", "doctor"], check=False)
    print(broken.stdout)
    assert broken.returncode == 1
    assert "FAIL tflite runtime: not importable" in broken.stdout
    assert "apt install --reinstall ./edgetpud_<version>_<arch>.deb" in broken.stdout
    box.run(["rm", "-r", "/root/tflite_runtime.away"])
    box.run(["apt", "install", "-y", "--reinstall", f"./{deb.name}"])  # the fix, as printed
    assert box.run(["edgetpud", "doctor"], check=False).returncode == 0


def test_doctor_fails_a_wrong_broker_password_with_its_fix(
    box: ct.Container, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The broker wants a password; the config's password file holds another one."""
    with Broker(tmp_path_factory.mktemp("auth"), users={"edgetpud": "right-password"}) as auth:
        box.write("/root/mqtt-password", "wrong-password\n", 0o600)
        config = config_text(auth).replace(
            f"port = {auth.port}\n",
            f'port = {auth.port}\nusername = "edgetpud"\npassword_file = "/root/mqtt-password"\n',
        )
        box.write("/root/wrong-password.toml", config)
        proc = box.run(["edgetpud", "doctor", "--config", "/root/wrong-password.toml"], check=False)
        print(proc.stdout)
        assert proc.returncode == 1
        (line,) = [i for i, text in enumerate(proc.stdout.splitlines()) if "broker:" in text]
        lines = proc.stdout.splitlines()
        assert lines[line].startswith(f"FAIL broker: 127.0.0.1:{auth.port} as edgetpud: "), lines
        assert "mqtt.password_file" in lines[line + 1] and lines[line + 1].startswith("     fix:")

        box.write("/root/mqtt-password", "right-password\n", 0o600)
        fixed = box.run(
            ["edgetpud", "doctor", "--config", "/root/wrong-password.toml"], check=False
        )
        assert f"OK   broker: connected to 127.0.0.1:{auth.port} as edgetpud" in fixed.stdout


def test_a_bad_config_on_reload_keeps_the_old_one(
    box: ct.Container, broker: Broker, sub: Subscriber, models_dir: Path
) -> None:
    good = box.run(["cat", CONFIG]).stdout
    box.write(CONFIG, good.replace('device = "cpu"', 'device = "cpu"\nno_such_key = 1'))
    assert box.run(["edgetpud", "check-config", CONFIG], check=False).returncode == 1
    before = len(sub.on(f"{BASE}/events"))
    box.run(["systemctl", "reload", "edgetpud"])
    events = wait_for(
        lambda: [json.loads(m.payload) for m in sub.on(f"{BASE}/events")[before:]
                 if b"reload" in m.payload],
        30,
        "a reload event",
    )  # fmt: skip
    print(events)
    assert [e.get("event", e.get("type")) for e in events] == ["reload_failed"], events
    assert "no_such_key" in json.dumps(events[0])
    assert show(box, "ActiveState")["ActiveState"] == "active"
    count = len(sub.on(f"{BASE}/models/cat/results"))
    sub.publish(f"{BASE}/models/cat/infer", (models_dir / "cat.bmp").read_bytes())
    sub.wait_for(f"{BASE}/models/cat/results", count + 1, timeout=60)
    box.write(CONFIG, good)


def test_a_pcie_driver_loaded_after_start_gets_its_device_access_without_a_restart(
    box: ct.Container,
) -> None:
    """The udev rule's command for a new apex device, run as udev would run it.

    No apex driver can be loaded here, so this checks the systemd half: the command
    makes systemd apply the unit's device policy again (which resolves char-apex anew)
    and the service keeps running, unrestarted.
    """
    rules = box.run(["cat", "/lib/udev/rules.d/60-edgetpud.rules"]).stdout
    (line,) = [r for r in rules.splitlines() if r.startswith('ACTION=="add", SUBSYSTEM=="apex"')]
    command = line.split('RUN+="', 1)[1].rsplit('"', 1)[0].replace('\\"', '"')
    assert command.startswith("/bin/sh -c '")
    pid = show(box, "MainPID")["MainPID"]
    box.run(["sh", "-c", command[len("/bin/sh -c '") : -1]])
    drop_in = "/run/systemd/system.control/edgetpud.service.d/50-DeviceAllow.conf"
    assert "DeviceAllow=char-apex rw" in box.run(["cat", drop_in]).stdout
    assert show(box, "MainPID", "ActiveState") == {"MainPID": pid, "ActiveState": "active"}


def test_doctor_says_when_a_pcie_node_appeared_after_the_service_started(
    box: ct.Container,
) -> None:
    """A stand-in /dev/apex_0 made now, as a driver loaded after start would make it (no apex
    driver can be loaded here: the node is a plain file, which is all this check looks at).

    The restart follows the node within the same second, most times: doctor compares to
    the microsecond, so a node made just before a restart reads as there at start.
    """
    try:
        box.run(["touch", "/dev/apex_0"])
        box.run(["systemctl", "restart", "edgetpud"])
        before = box.run(["edgetpud", "doctor"], check=False).stdout
        print(box.run(["stat", "-c", "%z", "/dev/apex_0"]).stdout, before)
        assert "OK   pcie access: /dev/apex_0 existed when edgetpud started" in before, before
        box.run(["rm", "/dev/apex_0"])
        box.run(["touch", "/dev/apex_0"])
        proc = box.run(["edgetpud", "doctor"], check=False)
        print(proc.stdout)
        lines = proc.stdout.splitlines()
        (i,) = [n for n, text in enumerate(lines) if text[5:].startswith("pcie access:")]
        assert lines[i].startswith("WARN pcie access: /dev/apex_0 appeared after edgetpud started")
        assert "DeviceAllow now: " in lines[i] and "char-apex rw" in lines[i]
        assert lines[i + 1] == (
            "     fix: if a model on this module does not open, `systemctl restart edgetpud`"
        )
    finally:
        box.run(["rm", "-f", "/dev/apex_0"])


def test_stop_publishes_offline(box: ct.Container, sub: Subscriber) -> None:
    started = time.monotonic()
    box.run(["systemctl", "stop", "edgetpud"])
    _timed("systemctl stop", started)
    wait_for(lambda: sub.on(f"{BASE}/status")[-1].payload == b"offline", 30, "status offline")


def test_purge_leaves_none_of_the_packages_files(box: ct.Container) -> None:
    listed = box.run(["dpkg", "-L", "edgetpud"]).stdout.split()
    files = [p for p in listed if box.run(["test", "-d", p], check=False).returncode != 0]
    started = time.monotonic()
    box.run(["apt-get", "purge", "-y", "-q", "edgetpud"])
    _timed("apt purge", started)
    left = [p for p in [*files, "/etc/edgetpud", "/var/lib/edgetpud", "/usr/lib/edgetpud",
                        "/var/lib/private/edgetpud", "/run/systemd/system.control/edgetpud.service.d"]
            if box.run(["test", "-e", p], check=False).returncode == 0]  # fmt: skip
    assert not left, f"apt purge left {left}"
    assert len(files) > 50, files
    # the models folder is the user's, not the package's: untouched
    assert box.run(["test", "-f", f"{MODELS}/{CPU_MODEL}"], check=False).returncode == 0


def test_piuparts_passes(deb: Path) -> None:  # the last test: its time goes in the file too
    """Install, remove, purge and the leftovers check, in piuparts' own chroot, from a base
    that already has systemd (so systemd's own tmpfiles are not counted against us)."""
    if shutil.which("piuparts") is None:
        pytest.fail("piuparts is missing: run make test-system (it installs it)")
    tarball = ct.base_tarball()
    started = time.monotonic()
    proc = subprocess.run(
        ["piuparts", f"--basetgz={tarball}", "--distribution=bookworm",
         f"--mirror={ct.mirror()} main", str(deb)],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    _timed("piuparts", started)
    (ROOT / "build" / "test-system-times.json").write_text(json.dumps(TIMES, indent=1) + "\n")
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "PASS: All tests." in proc.stdout + proc.stderr
