"""Which TFLite runtime and which libedgetpu the daemon uses, and whether they pair.

libedgetpu is built against one TensorFlow version and must be paired with a matching
TFLite runtime: Coral's own 16.0 packages broke with tflite-runtime 2.12 and newer;
community builds carry their TensorFlow version in the package version ("16.0tf2.17.1-1").
`pairing()` says OK or WARN with the fix; `edgetpud doctor` prints it, and the `Versions`
component puts both versions and the verdict in the health snapshot (key "runtime") and
logs a warning at start for a pair known not to work.

libedgetpu's own version string (`edgetpu_version()`, edgetpu_c.h) is read in a
short-lived child process: the daemon itself never loads libedgetpu (device hosts do).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, Literal

from edgetpud.config import Config
from edgetpud.errors import EdgetpudError

log = logging.getLogger(__name__)

INSTALL_DOC = "/usr/share/doc/edgetpud/docs/install.md"
LIBEDGETPU_PACKAGES = ("libedgetpu1-std", "libedgetpu1-max")
_TF_IN_VERSION = re.compile(r"tf(\d+)\.(\d+)", re.IGNORECASE)
CHILD_TIMEOUT = 15.0  # seconds for the child that reads edgetpu_version()

Verdict = Literal["OK", "WARN"]


def pairing(package_version: str, runtime: str, runtime_version: str) -> tuple[Verdict, str, str]:
    """(verdict, what was seen, fix) for this libedgetpu (its Debian version) and runtime."""
    shown = f"libedgetpu {package_version or '(version unknown)'} with {runtime} {runtime_version}"
    fix = f"take the libedgetpu build for TensorFlow {_minor(runtime_version)} ({INSTALL_DOC})"
    if runtime != "tflite_runtime" or not package_version:
        return "OK", f"{shown}: no pair known not to work", ""
    tf = _TF_IN_VERSION.search(package_version)
    if tf is None:
        if package_version.startswith("16.0") and _minor_tuple(runtime_version) >= (2, 12):
            return (
                "WARN",
                f"{shown}: Coral's 16.0 builds are known to fail with 2.12 and newer",
                fix,
            )
        return "OK", f"{shown}: no pair known not to work", ""
    built_for = f"{tf.group(1)}.{tf.group(2)}"
    if built_for == _minor(runtime_version):
        return "OK", f"{shown}: built for the same TensorFlow {built_for}", ""
    return "WARN", f"{shown}: built for TensorFlow {built_for}, a pair not known to work", fix


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _minor_tuple(version: str) -> tuple[int, int]:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def libedgetpu_package() -> tuple[str, str]:
    """(package, version) of the installed libedgetpu1-std/-max, or ("", "")."""
    for package in LIBEDGETPU_PACKAGES:
        try:
            proc = subprocess.run(
                ["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", package],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return "", ""
        status, _, version = proc.stdout.partition(" ")
        if proc.returncode == 0 and status == "installed":
            return package, version
    return "", ""


def libedgetpu_version(library: str) -> str:
    """libedgetpu's edgetpu_version() string, read in a child process.

    Raises EdgetpudError with the child's reason when it cannot be read.
    """
    code = (
        "import sys\n"
        "from edgetpud import edgetpu_c\n"
        "try:\n"
        "    print(edgetpu_c.library_version(sys.argv[1]))\n"
        "except OSError as exc:\n"
        "    sys.exit(str(exc))\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, library],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EdgetpudError(
            f"reading {library}'s version took over {CHILD_TIMEOUT:.0f} s"
        ) from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise EdgetpudError(lines[-1] if lines else f"exit status {proc.returncode}")
    return proc.stdout.strip()


def report(cfg: Config) -> dict[str, Any]:
    """Both versions and the pairing verdict, JSON-ready (the health snapshot's "runtime")."""
    from edgetpud import runtime

    out: dict[str, Any] = {}
    try:
        name, version = runtime.runtime_version(cfg.runtime.runtime)
        out["tflite"] = {"name": name, "version": version}
    except EdgetpudError as exc:
        name, version = "", ""
        out["tflite"] = {"error": str(exc)}
    package, package_version = libedgetpu_package()
    try:
        built = libedgetpu_version(cfg.runtime.library)
        out["libedgetpu"] = {
            "library": cfg.runtime.library,
            "version": built,
            "package": package or None,
            "package_version": package_version or None,
        }
    except EdgetpudError as exc:
        out["libedgetpu"] = {"library": cfg.runtime.library, "error": str(exc)}
        return out
    if name:
        verdict, detail, fix = pairing(package_version, name, version)
        out["pairing"] = {"verdict": verdict, "detail": detail, "fix": fix or None}
    return out


class Versions:
    """A daemon component (ports.Component): the "runtime" section of the health snapshot."""

    name = "runtime"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._report: dict[str, Any] = {}

    def start(self) -> None:
        self._read()

    def apply_config(self, cfg: Config) -> None:
        changed = (cfg.runtime.library, cfg.runtime.runtime) != (
            self.cfg.runtime.library,
            self.cfg.runtime.runtime,
        )
        self.cfg = cfg
        if changed:
            self._read()

    def health(self) -> Mapping[str, Any] | None:
        return self._report

    def stop(self, deadline: float) -> None:
        pass

    def _read(self) -> None:
        self._report = report(self.cfg)
        tflite = self._report["tflite"]
        lib = self._report["libedgetpu"]
        log.info(
            "versions: %s; libedgetpu %s",
            f"{tflite['name']} {tflite['version']}" if "name" in tflite else "no TFLite runtime",
            lib.get("version") or f"not loadable ({lib.get('error')})",
        )
        pair = self._report.get("pairing")
        if pair and pair["verdict"] == "WARN":
            log.warning("%s; %s", pair["detail"], pair["fix"])
