"""The Debian package, end to end: build, lintian, install, run, upgrade, purge.

These tests install edgetpud system-wide, so they run only as root (CI runs
`make test` as root on a throwaway machine). They leave the machine as they
found it: a package left over from an earlier run is purged first, and the
package is purged again at the end.
"""

from __future__ import annotations

import configparser
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import debian
from tests.support.debian import ROOT, NotifyListener, clean_env, run
from tests.support.polling import wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="installs edgetpud_*.deb system-wide with apt: run as root (CI runs make test as root)",
    ),
]

CONFFILE = Path("/etc/edgetpud/edgetpud.toml")
# Where Debian 12's debhelper puts them (dpkg -L lists /lib/..., not /usr/lib/...).
INSTALLED_UNIT = Path("/lib/systemd/system/edgetpud.service")
INSTALLED_RULES = Path("/lib/udev/rules.d/60-edgetpud.rules")
PRIVATE_RUNTIME = Path("/usr/lib/edgetpud/python")
NATIVE_ARCH = subprocess.run(
    ["dpkg", "--print-architecture"], capture_output=True, text=True, check=False
).stdout.strip()
# ELF e_machine of the tflite_runtime library each architecture's package must carry.
ELF_MACHINE = {"amd64": 62, "arm64": 183, "armhf": 40}
DIST = Path("/usr/lib/python3/dist-packages")
CPU_MODEL = "mobilenet_v1_0.25_128_quant.tflite"
TPU_MODEL = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"


@pytest.fixture(scope="module")
def _lock() -> Iterator[None]:
    """One package test run per machine at a time: they share dpkg and /etc."""
    with open("/run/lock/edgetpud-package-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def built_all(_lock: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`make deb` into a private folder: {architecture: .deb} (lintian-ARCH.log beside it)."""
    for tool in ("dpkg-buildpackage", "lintian", "dh_installsysusers", "apt-get"):
        if shutil.which(tool, path=debian.DEBIAN_PATH) is None:
            pytest.fail(f"{tool} is missing: run `make test` (it installs the build packages)")
    out = tmp_path_factory.mktemp("deb")
    proc = run(["make", "--no-print-directory", "deb", f"DEB_DIR={out}"], cwd=ROOT, timeout=900)
    print(proc.stdout[-3000:])
    debs = {arch: sorted(out.glob(f"edgetpud_*_{arch}.deb")) for arch in ELF_MACHINE}
    assert all(len(found) == 1 for found in debs.values()), f"expected one .deb per arch: {debs}"
    return {arch: found[0] for arch, found in debs.items()}


@pytest.fixture(scope="module")
def built(built_all: dict[str, Path]) -> Path:
    """The package for this machine's architecture."""
    return built_all[NATIVE_ARCH]


@pytest.fixture(scope="module")
def installed(built: Path) -> Iterator[Path]:
    """The built package installed with apt, as a user would; purged afterwards."""
    if debian.is_known():
        debian.purge()
    debian.apt_install(built)
    yield built
    if debian.is_known():
        debian.purge()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder outside /tmp/pytest-of-root (mode 0700) that the edgetpud user can read."""
    folder = Path(tempfile.mkdtemp(prefix="edgetpud-pkgtest-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("arch", sorted(ELF_MACHINE))
def test_package_builds_and_lintian_is_clean(built_all: dict[str, Path], arch: str) -> None:
    log = (built_all[arch].parent / f"lintian-{arch}.log").read_text()
    tags = [line for line in log.splitlines() if line[:3] in ("E: ", "W: ", "I: ", "P: ")]
    print(f"lintian {arch} (errors, warnings, info, pedantic):", *tags or ["none"], sep="\n  ")
    assert not [t for t in tags if t.startswith(("E: ", "W: "))], log


@pytest.mark.parametrize("arch", sorted(ELF_MACHINE))
def test_each_architectures_package_carries_its_own_tflite_runtime(
    built_all: dict[str, Path], arch: str, tmp_path: Path
) -> None:
    deb = built_all[arch]
    assert run(["dpkg-deb", "-f", str(deb), "Architecture"]).stdout.strip() == arch
    run(["dpkg-deb", "-x", str(deb), str(tmp_path)])
    private = tmp_path / PRIVATE_RUNTIME.relative_to("/")
    (library,) = private.glob("tflite_runtime/_pywrap_tensorflow_interpreter_wrapper*.so")
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    machine = int.from_bytes(header[18:20], "little")
    assert machine == ELF_MACHINE[arch], f"{library.name} in {deb.name} is for e_machine {machine}"
    (info,) = private.glob("tflite_runtime-*.dist-info")
    assert info.name == "tflite_runtime-2.14.0.dist-info"
    # nothing else of the wheel's may shadow Debian's modules (numpy stays Debian's)
    assert sorted(p.name for p in private.iterdir()) == sorted([info.name, "tflite_runtime"])
    depends = run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
    assert "python3 (<< 3.12)" in depends and "python3-numpy (<< 1:2)" in depends, depends


def test_deb_holds_both_packages_their_entry_points_and_the_service_files(
    built: Path, tmp_path: Path
) -> None:
    run(["dpkg-deb", "-x", str(built), str(tmp_path)])
    dist = tmp_path / DIST.relative_to("/")
    assert (dist / "edgetpud" / "cli.py").is_file()
    assert (dist / "edgetpud_plugins" / "__init__.py").is_file()
    (info,) = dist.glob("edgetpud-*.dist-info")
    entry_points = configparser.ConfigParser()
    entry_points.read(info / "entry_points.txt")
    assert entry_points["console_scripts"]["edgetpud"] == "edgetpud.cli:main"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"].get("edgetpud.plugins", {})
    shipped = dict(entry_points["edgetpud.plugins"]) if declared else {}
    assert shipped == declared
    for path in (
        "usr/bin/edgetpud",
        "etc/edgetpud/edgetpud.toml",
        str(INSTALLED_UNIT).lstrip("/"),
        str(INSTALLED_RULES).lstrip("/"),
        "usr/lib/sysusers.d/edgetpud.conf",
        "usr/share/man/man8/edgetpud.8.gz",
    ):
        assert (tmp_path / path).is_file(), f"{path} is missing from {built.name}"
    # every document the unit, the example config and the README point at is there, as named
    doc = tmp_path / "usr/share/doc/edgetpud"
    unit = (tmp_path / "lib/systemd/system/edgetpud.service").read_text()
    conffile = (tmp_path / "etc/edgetpud/edgetpud.toml").read_text()
    named = re.findall(r"file:(/\S+)", unit) + re.findall(r"(/usr/share/doc/\S+\.md)", conffile)
    named += [
        f"/usr/share/doc/edgetpud/{link}"
        for link in re.findall(r"\]\((docs/[^)#]+)", (doc / "README.md").read_text())
    ]
    assert len(named) > 10, named
    missing = sorted({n for n in named if not (tmp_path / n.lstrip("/")).is_file()})
    assert not missing, f"{built.name} lacks documents it points at: {missing}"
    control = tmp_path / "control"
    run(["dpkg-deb", "-e", str(built), str(control)])
    assert (control / "conffiles").read_text().split() == [str(CONFFILE)]


def test_install_creates_the_service_user_in_the_device_groups(installed: Path) -> None:
    user = pwd.getpwnam("edgetpud")
    assert user.pw_shell == "/usr/sbin/nologin"
    groups = run(["id", "-nG", "edgetpud"]).stdout.split()
    assert "plugdev" in groups
    assert "apex" in groups


def test_installed_config_is_valid_for_the_service_user(installed: Path) -> None:
    proc = run(
        ["runuser", "-u", "edgetpud", "--", "/usr/bin/edgetpud", "check-config", str(CONFFILE)],
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_installed_edgetpud_reads_compiled_models_with_debians_libraries(
    installed: Path, models_dir: Path, tmp_path: Path
) -> None:
    """The plan needs each Edge TPU model's caching token, read with python3-flatbuffers."""
    text = (ROOT / "tests" / "data" / "placement.toml").read_text()
    config = tmp_path / "edgetpud.toml"
    config.write_text(text.replace("/work/shared/models", str(models_dir)))
    devices = ROOT / "docs" / "examples" / "devices-1pci-2usb.json"
    proc = run(["/usr/bin/edgetpud", "plan", "--config", str(config), "--devices", str(devices)])
    models = json.loads(proc.stdout)["models"]
    assert models["birds"]["placement"] == models["garden"]["placement"] == ["usb:1-2"]
    assert "co-compiled" in models["birds"]["reason"]
    assert models["doorbell"]["tier"] == "dedicated", models["doorbell"]


def test_installed_unit_verifies_and_is_enabled(installed: Path) -> None:
    proc = run(["systemd-analyze", "verify", str(INSTALLED_UNIT)], check=False)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == 0
    wants = Path("/etc/systemd/system/multi-user.target.wants/edgetpud.service")
    assert wants.is_symlink(), "dh_installsystemd should enable the service on install"
    man = run(["man", "-w", "edgetpud"]).stdout.strip()
    assert man.endswith("man8/edgetpud.8.gz")


def test_installed_service_reaches_ready(
    installed: Path, models_dir: Path, shared_dir: Path
) -> None:
    from tests.support.broker import Broker

    for name in (CPU_MODEL, TPU_MODEL, "imagenet_labels.txt"):
        shutil.copy(models_dir / name, shared_dir / name)
        (shared_dir / name).chmod(0o644)
    state = shared_dir / "state"
    state.mkdir()
    shutil.chown(state, "edgetpud", "edgetpud")
    with Broker(shared_dir) as broker:
        config = shared_dir / "edgetpud.toml"
        config.write_text(
            f"""
[daemon]
node_id = "pkgtest"
state_dir = "{state}"

[mqtt]
host = "127.0.0.1"
port = {broker.port}

[runtime]
cpu_fallback = true

[models.demo]
model = "{shared_dir / TPU_MODEL}"
cpu_model = "{shared_dir / CPU_MODEL}"
labels = "{shared_dir / "imagenet_labels.txt"}"
"""
        )
        config.chmod(0o644)
        cmd = debian.unit_exec_start()
        cmd[cmd.index("--config") + 1] = str(config)
        notify = NotifyListener(shared_dir / "notify.sock")
        log_path = shared_dir / "daemon.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                ["setpriv", "--reuid=edgetpud", "--regid=edgetpud", "--init-groups", "--", *cmd],
                env=clean_env(NOTIFY_SOCKET=str(notify.path)),
                cwd="/",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(
                lambda: notify.saw("READY=1") or proc.poll() is not None,
                120,
                "READY=1 from the installed service",
            )
            output = log_path.read_text(errors="replace")
            assert notify.saw("READY=1"), f"exited {proc.returncode} before READY=1:\n{output}"
            # the package carries its TFLite runtime: nothing else was installed
            assert "no TFLite runtime" not in output, output
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
            notify.close()
        print("notifications:", notify.messages)
        print(log_path.read_text(errors="replace")[-3000:])


def test_installed_package_classifies_on_the_cpu_with_its_own_runtime(
    installed: Path, models_dir: Path, shared_dir: Path
) -> None:
    """No pip, no other repository: the packaged tflite_runtime on Debian's numpy serves."""
    for name in (CPU_MODEL, "imagenet_labels.txt", "cat.bmp"):
        shutil.copy(models_dir / name, shared_dir / name)
        (shared_dir / name).chmod(0o644)
    proc = run(
        ["runuser", "-u", "edgetpud", "--", "/usr/bin/edgetpud", "infer",
         "--model", str(shared_dir / CPU_MODEL), "--labels", str(shared_dir / "imagenet_labels.txt"),
         "--top-k", "1", str(shared_dir / "cat.bmp")],
        cwd="/",
    )  # fmt: skip
    result = json.loads(proc.stdout.splitlines()[0])
    print(result)
    assert result["runtime"] == "tflite_runtime", result
    assert result["classes"][0]["label"] == "Egyptian cat", result
    numpy = run(["python3", "-c", "import numpy; print(numpy.__file__, numpy.__version__)"])
    assert numpy.stdout.startswith("/usr/lib/python3/dist-packages/numpy/"), numpy.stdout


def test_edited_conffile_survives_an_upgrade(installed: Path, tmp_path: Path) -> None:
    original = CONFFILE.read_text()
    edited = original.replace('node_id = ""', 'node_id = "edited-by-admin"', 1)
    assert edited != original, "the example config should have a node_id line"
    CONFFILE.write_text(edited)
    newer = debian.with_version(installed, "0.1.0+upgradetest1", tmp_path)
    debian.apt_install(newer)
    assert debian.installed_version() == "0.1.0+upgradetest1"
    assert CONFFILE.read_text() == edited
    leftovers = sorted(p.name for p in CONFFILE.parent.glob("edgetpud.toml.dpkg-*"))
    assert leftovers == []


def test_purge_removes_everything_but_the_user(installed: Path) -> None:
    debian.purge()
    assert not debian.is_known()
    for path in (
        Path("/usr/bin/edgetpud"),
        DIST / "edgetpud",
        DIST / "edgetpud_plugins",
        Path("/etc/edgetpud"),
        INSTALLED_UNIT,
        INSTALLED_RULES,
        PRIVATE_RUNTIME.parent,
        Path("/usr/lib/sysusers.d/edgetpud.conf"),
        Path("/usr/share/doc/edgetpud"),
        Path("/var/lib/edgetpud"),
        Path("/etc/systemd/system/multi-user.target.wants/edgetpud.service"),
    ):
        assert not os.path.lexists(path), f"{path} is still there after apt-get purge"
    # Debian policy: system users and groups stay, files they own may still exist.
    assert pwd.getpwnam("edgetpud").pw_name == "edgetpud"
