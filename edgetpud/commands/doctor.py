"""`edgetpud doctor [--json] [--config PATH]`: what stops edgetpud from serving, in order.

One line per check, OK / WARN / FAIL, each WARN and FAIL with its fix: the config; the
TFLite runtime and its version; libedgetpu, its version and whether the pair is known to
work; the udev rules; the service user and its groups; each accelerator's device node
(owner, group, mode), whether the service user can open it and who else holds it; each
accelerator's verdict; each model opened on its intended device (in a short-lived child
process, so that a libedgetpu abort costs the child, not doctor); the broker, reached with
the configured credentials and TLS. Exit 0 when nothing FAILs, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import grp
import json
import os
import pwd
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from edgetpud import config as config_mod
from edgetpud import versions
from edgetpud.devices.access import group_name, holders, user_name
from edgetpud.errors import (
    ConfigError,
    ConfigUnreadableError,
    DeviceError,
    EdgetpudError,
    ModelError,
)

SCHEMA = "edgetpud.doctor/1"
SERVICE_USER = "edgetpud"
RULES_NAME = "60-edgetpud.rules"
# udev reads rules from these; Debian 12's package puts them in /lib, /etc overrides it.
RULES_DIRS = (
    "/etc/udev/rules.d",
    "/run/udev/rules.d",
    "/lib/udev/rules.d",
    "/usr/lib/udev/rules.d",
)
DEVICE_GROUP = {"usb": "plugdev", "pci": "apex"}
APEX_NODES = "/dev/apex_*"
OPEN_TIMEOUT = 60.0  # seconds for one model to open in the child process
INSTALL_DOC = versions.INSTALL_DOC

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, the verdict, what was seen, and the fix."""

    check: str
    status: Status
    detail: str
    fix: str = ""


def main(args: argparse.Namespace) -> int:
    if getattr(args, "open_model", None):
        return _open_model_child(args.open_model)
    checks = Doctor(Path(args.config), getattr(args, "user", None) or SERVICE_USER).run()
    failed = any(c.status == "FAIL" for c in checks)
    if args.json:
        report = {"schema": SCHEMA, "ok": not failed, "checks": [asdict(c) for c in checks]}
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for c in checks:
            print(f"{c.status:<4} {c.check}: {c.detail}")
            if c.fix:
                print(f"     fix: {c.fix}")
        counts = {s: sum(c.status == s for c in checks) for s in ("OK", "WARN", "FAIL")}
        print(f"{counts['OK']} OK, {counts['WARN']} WARN, {counts['FAIL']} FAIL")
    return 1 if failed else 0


class Doctor:
    """Runs the checks in order; later checks use what earlier ones found."""

    def __init__(self, path: Path, service_user: str = SERVICE_USER) -> None:
        self.path = path
        self.service_user = service_user
        self.checks: list[Check] = []
        self.cfg: config_mod.Config | None = None
        self.runtime: tuple[str, str] | None = None  # (name, version)
        self.library_ok = False
        self.user: pwd.struct_passwd | None = None
        self.devices: list[tuple[str, str, str]] = []  # (identity, kind, verdict)

    def add(self, check: str, status: Status, detail: str, fix: str = "") -> None:
        self.checks.append(Check(check, status, detail, fix))

    def run(self) -> list[Check]:
        self.check_config()
        self.check_runtime()
        self.check_libedgetpu()
        self.check_udev_rules()
        self.check_service_user()
        self.check_devices()
        self.check_apex_after_start()
        self.check_models()
        self.check_broker()
        return self.checks

    # --- config ---------------------------------------------------------------------------

    def check_config(self) -> None:
        try:
            cfg = config_mod.load(self.path, check_files=True)
        except ConfigUnreadableError as exc:
            self.add(
                "config",
                "FAIL",
                str(exc),
                f"create it from the example ({INSTALL_DOC}), or pass --config PATH",
            )
            return
        except ConfigError as exc:
            problems = "; ".join(str(issue) for issue in exc.issues)
            self.add(
                "config",
                "FAIL",
                f"{self.path}: {len(exc.issues)} problem(s): {problems}",
                f"fix them (`edgetpud check-config {self.path}` lists them), then "
                "`systemctl reload edgetpud`",
            )
            return
        self.cfg = cfg
        names = ", ".join(cfg.models) or "no models"
        self.add("config", "OK", f"{self.path}: valid ({len(cfg.models)} model(s): {names})")

    # --- runtimes -------------------------------------------------------------------------

    def check_runtime(self) -> None:
        from edgetpud import runtime

        prefer = self.cfg.runtime.runtime if self.cfg else "auto"
        try:
            name, version = runtime.runtime_version(prefer)
        except ModelError as exc:
            self.add("tflite runtime", "FAIL", "not importable", str(exc))
            return
        self.runtime = (name, version)
        where = runtime.runtime_location(name)
        self.add("tflite runtime", "OK", f"{name} {version} ({where})")

    def check_libedgetpu(self) -> None:
        library = self.cfg.runtime.library if self.cfg else "libedgetpu.so.1"
        needed = self._edgetpu_needed()
        try:
            version = versions.libedgetpu_version(library)
        except EdgetpudError as exc:
            self.add(
                "libedgetpu",
                "FAIL" if needed else "WARN",
                f"{library} cannot be loaded ({exc})"
                + ("" if needed else "; only Edge TPU models need it"),
                f"install libedgetpu1-std (or -max) as {INSTALL_DOC} says, or set "
                "runtime.library to its path",
            )
            return
        self.library_ok = True
        package, package_version = versions.libedgetpu_package()
        shown = f"{package} {package_version}" if package else "not from a Debian package"
        self.add("libedgetpu", "OK", f"{library}: {version or 'no version string'} ({shown})")
        if self.runtime is not None:
            status, detail, fix = versions.pairing(package_version, *self.runtime)
            self.add("runtime pairing", status, detail, fix)

    def _edgetpu_needed(self) -> bool:
        """Whether any configured model must run on an Edge TPU (no CPU way to serve it)."""
        if self.cfg is None:
            return False
        return any(m.device != "cpu" for m in self.cfg.models.values())

    # --- udev and users -------------------------------------------------------------------

    def check_udev_rules(self) -> None:
        found = [Path(d) / RULES_NAME for d in RULES_DIRS if (Path(d) / RULES_NAME).is_file()]
        if not found:
            self.add(
                "udev rules",
                "FAIL",
                f"{RULES_NAME} is in none of {', '.join(RULES_DIRS)}",
                "reinstall the package (`apt install --reinstall ./edgetpud_<version>_<arch>.deb`, "
                "the file you installed it from), then "
                "`udevadm control --reload-rules && udevadm trigger`",
            )
            return
        text = found[0].read_text(errors="replace")
        missing = sorted({g for g in re.findall(r'GROUP="([^"]+)"', text) if not _group_exists(g)})
        if missing:
            self.add(
                "udev rules",
                "FAIL",
                f"{found[0]} gives devices to group(s) {', '.join(missing)}, which do not exist; "
                "udev leaves those nodes to root",
                "`systemd-sysusers edgetpud.conf`, then `udevadm control --reload-rules && "
                "udevadm trigger --subsystem-match=usb --subsystem-match=apex`",
            )
            return
        self.add("udev rules", "OK", str(found[0]))

    def check_service_user(self) -> None:
        try:
            self.user = pwd.getpwnam(self.service_user)
        except KeyError:
            self.add(
                "service user",
                "FAIL",
                f"no user {self.service_user}",
                "`systemd-sysusers edgetpud.conf` (the package does this on install)",
            )
            return
        groups = _groups_of(self.user)
        missing = [g for g in DEVICE_GROUP.values() if g not in groups]
        shown = ", ".join(sorted(groups))
        if missing:
            self.add(
                "service user",
                "FAIL",
                f"{self.service_user} is in {shown}, not in {', '.join(missing)}",
                f"`usermod -aG {','.join(missing)} {self.service_user}`, then "
                "`systemctl restart edgetpud`",
            )
            return
        self.add(
            "service user", "OK", f"{self.service_user} (uid {self.user.pw_uid}), groups {shown}"
        )

    # --- devices --------------------------------------------------------------------------

    def check_devices(self) -> None:
        from edgetpud.devices import enumerate_devices

        policy = self.cfg.devices if self.cfg else config_mod.DevicesConfig()
        state_dir = self.cfg.daemon.state_dir if self.cfg else config_mod.default_state_dir()
        try:
            records = enumerate_devices(policy, state_dir)
        except (OSError, ImportError) as exc:
            self.add(
                "accelerators",
                "FAIL",
                f"cannot read udev ({exc})",
                "run doctor on the host, with /sys and /run/udev available",
            )
            return
        if not records:
            self.add(
                "accelerators",
                "WARN",
                "no Edge TPU found",
                "plug in a USB Accelerator (a USB 3 port), or load the apex driver for a PCIe "
                "module; `edgetpud devices` lists what udev sees",
            )
        for record in records:
            self.devices.append((record.identity, record.kind, record.verdict))
            name = f"device {record.identity}"
            if record.dev_node:
                self._check_node(name, record.dev_node, DEVICE_GROUP.get(record.kind, ""))
                self._check_holders(name, record.dev_node)
            if record.verdict == "ok":
                self.add(f"{name} verdict", "OK", "ok")
            else:
                self.add(
                    f"{name} verdict",
                    "WARN" if record.verdict == "degraded" else "FAIL",
                    f"{record.verdict}: {'; '.join(record.reasons) or 'no reason given'}",
                    "`edgetpud devices` shows the port, power and hub behind it",
                )

    def _check_node(self, name: str, node: str, group: str) -> None:
        try:
            st = os.stat(node)
        except OSError as exc:
            self.add(f"{name} node", "FAIL", f"{node}: {exc.strerror}", "replug the device")
            return
        owner = user_name(st.st_uid)
        mode = stat.filemode(st.st_mode)
        seen = f"{node} {mode} {owner}:{group_name(st.st_gid)}"
        if self.user is None:
            self.add(f"{name} node", "WARN", f"{seen}; no {self.service_user} user to judge it by")
            return
        if _can_open(st, self.user):
            self.add(f"{name} node", "OK", f"{seen}; {self.service_user} can open it")
            return
        self.add(
            f"{name} node",
            "FAIL",
            f"{seen}; {self.service_user} cannot open it (the rules give it to group {group}, 0660)",
            "`udevadm control --reload-rules && udevadm trigger --action=change "
            f"{node}`; if the group stays wrong, check `udevadm test $(udevadm info -q path "
            f"-n {node})` for the rule that sets it",
        )

    def _check_holders(self, name: str, node: str) -> None:
        found = [(h, user_name(_uid(f"/proc/{h.pid}"))) for h in holders(node)]
        others = [f"{h} user {user}" for h, user in found if user != self.service_user]
        if others:
            self.add(
                f"{name} holders",
                "WARN",
                f"held by {', '.join(others)}: an Edge TPU opens in one process at a time",
                "stop that program, or take the device out of edgetpud's config",
            )
        elif found:
            pids = ", ".join(str(h.pid) for h, _user in found)
            self.add(f"{name} holders", "OK", f"held by {self.service_user} (pid {pids})")
        else:
            self.add(f"{name} holders", "OK", "no process holds it")

    def check_apex_after_start(self) -> None:
        """PCIe modules whose node appeared after the service started (a driver loaded late).

        systemd resolves the unit's DeviceAllow=char-apex against /proc/devices only when it
        applies the unit's device policy; the package's udev rule applies it again when an
        apex device appears. Say so, so that a module the service cannot open is explained.
        """
        nodes = sorted(glob.glob(APEX_NODES))
        started = _service_started() if nodes else None
        if started is None:
            return
        late = [n for n in nodes if _ctime(n) > started]
        if not late:
            self.add("pcie access", "OK", f"{', '.join(nodes)} existed when edgetpud started")
            return
        allowed = _unit_property("DeviceAllow") or "none"
        self.add(
            "pcie access",
            "WARN",
            f"{', '.join(late)} appeared after edgetpud started; systemd resolves "
            "DeviceAllow=char-apex only when it applies the unit's device policy, and the "
            "package's udev rule applies it again when an apex device appears (DeviceAllow "
            f"now: {allowed})",
            "if a model on this module does not open, `systemctl restart edgetpud`",
        )

    # --- models ---------------------------------------------------------------------------

    def check_models(self) -> None:
        if self.cfg is None:
            return
        if self.runtime is None:
            if self.cfg.models:
                self.add(
                    "models",
                    "FAIL",
                    "not opened: no TFLite runtime",
                    "fix the tflite runtime check above first",
                )
            return
        usable = [identity for identity, _kind, verdict in self.devices if verdict != "rejected"]
        for name, model in self.cfg.models.items():
            path, device = _intended(model, usable, self.cfg.runtime.cpu_fallback)
            if path is None:
                self.add(
                    f"model {name}",
                    "FAIL",
                    f"{model.model.name} needs an Edge TPU (device {model.device!r}) and none "
                    "is usable",
                    "plug one in (see the device lines above), or give the model a cpu_model "
                    "and set runtime.cpu_fallback = true",
                )
                continue
            error = open_in_child(path, device, self.cfg.runtime.library, self.cfg.runtime.runtime)
            where = "the CPU" if device == "cpu" else device
            if error:
                self.add(
                    f"model {name}",
                    "FAIL",
                    f"{path.name} did not open on {where}: {error}",
                    "the message says what to change; `edgetpud infer --model "
                    f"{path} --device {device} IMAGE` repeats it",
                )
            else:
                self.add(f"model {name}", "OK", f"{path.name} opens on {where}")

    # --- broker ---------------------------------------------------------------------------

    def check_broker(self) -> None:
        if self.cfg is None:
            return
        from edgetpud import mqtt  # the only module that speaks MQTT

        m = self.cfg.mqtt
        where = f"{m.host}:{m.port}" + (" (TLS)" if m.tls else "")
        who = f" as {m.username}" if m.username else ""
        topic = f"{m.topic_prefix}/{self.cfg.node_id}/status"
        health_topic = f"{m.topic_prefix}/{self.cfg.node_id}/health"
        try:
            retained = mqtt.read_retained(m, f"{m.topic_prefix}/{self.cfg.node_id}/+", timeout=5.0)
        except ConfigUnreadableError as exc:
            self.add("broker", "FAIL", str(exc), "run edgetpud doctor as root (sudo)")
            return
        except ConnectionError as exc:
            # the mqtt module's messages end in "; <what to check>"
            detail, _, fix = str(exc).rpartition("; ")
            self.add(
                "broker",
                "FAIL",
                f"{where}{who}: {detail or fix}",
                f"{fix if detail else 'check the [mqtt] section'}; after an edit, "
                "`systemctl reload edgetpud`",
            )
            return
        state = retained.get(topic, b"").decode(errors="replace") or "no status yet"
        self.add("broker", "OK", f"connected to {where}{who}; {topic}: {state}")
        self._check_refusals(retained.get(health_topic, b""), where)

    def _check_refusals(self, health: bytes, where: str) -> None:
        """What the daemon's retained health says the broker refused (its ACL), and the
        requests it refused for their response topics (docs/mqtt.md)."""
        try:
            mq = json.loads(health).get("mqtt") or {} if health else {}
        except (ValueError, AttributeError):
            return
        denied = mq.get("publish_denied") or {}
        if isinstance(denied, dict) and denied:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(denied.items()))
            self.add(
                "broker ACL",
                "FAIL",
                f"{where} refused the daemon's publishes ({counts}); those messages were lost",
                "let the daemon's MQTT user write its topics, the response topics "
                "(mqtt.response_topics) and the discovery prefix in the broker's ACL "
                '(docs/mqtt.md, "Broker ACL"), then restart the broker',
            )
        topics = mq.get("response_topics_refused") or {}
        if isinstance(topics, dict) and topics:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(topics.items()))
            self.add(
                "response topics",
                "WARN",
                f"requests refused for their MQTT 5 response topic ({counts})",
                "a client names a topic edgetpud will not publish to; see docs/mqtt.md, "
                '"Response topics" (and mqtt.response_topics)',
            )


# --- helpers ------------------------------------------------------------------------------


def _unit_property(name: str) -> str:
    """One property of the running edgetpud unit (`systemctl show`), or "" without systemd."""
    try:
        proc = subprocess.run(
            ["systemctl", "show", "edgetpud.service", f"--property={name}", "--value",
             "--timestamp=us+utc"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    # a list property (DeviceAllow) comes one value per line
    return ", ".join(proc.stdout.split("\n")).strip(", ") if proc.returncode == 0 else ""


# ExecMainStartTimestamp with --timestamp=us+utc: "Sat 2026-12-05 11:41:29.123456 UTC"
_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d+))? UTC")


def _service_started() -> float | None:
    """When the running service's main process started (Unix time), or None if not running."""
    if _unit_property("ActiveState") != "active":
        return None
    # to the microsecond: a node made in the second before a restart is not made after it
    found = _STAMP.search(_unit_property("ExecMainStartTimestamp"))
    if found is None:
        return None
    when = datetime.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S")
    return when.replace(tzinfo=datetime.timezone.utc).timestamp() + float(f"0.{found[2] or 0}")


def _ctime(path: str) -> float:
    try:
        return os.stat(path).st_ctime
    except OSError:
        return 0.0


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _groups_of(user: pwd.struct_passwd) -> set[str]:
    names = {g.gr_name for g in grp.getgrall() if user.pw_name in g.gr_mem}
    names.add(group_name(user.pw_gid))
    return names


def _can_open(st: os.stat_result, user: pwd.struct_passwd) -> bool:
    """Whether `user` may open the node read-write, by its owner, group and mode bits."""
    rw = stat.S_IRUSR | stat.S_IWUSR
    if st.st_uid == user.pw_uid:
        return st.st_mode & rw == rw
    gids = {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem} | {user.pw_gid}
    if st.st_gid in gids:
        return st.st_mode & (stat.S_IRGRP | stat.S_IWGRP) == stat.S_IRGRP | stat.S_IWGRP
    return st.st_mode & (stat.S_IROTH | stat.S_IWOTH) == stat.S_IROTH | stat.S_IWOTH


def _uid(proc_dir: str) -> int:
    try:
        return os.stat(proc_dir).st_uid
    except OSError:
        return -1


def _intended(
    model: config_mod.ModelConfig, usable: Sequence[str], cpu_fallback: bool
) -> tuple[Path | None, str]:
    """The file and device a model would open on now: its device if an Edge TPU is usable,
    else its CPU build (or the model itself when it is a plain CPU model)."""
    if model.device == "cpu":
        return (model.cpu_model or model.model), "cpu"
    if model.device not in ("any", "usb", "pci"):
        if model.device in usable:
            return model.model, model.device
    else:
        kinds = ("usb:", "pci:") if model.device == "any" else (f"{model.device}:",)
        for identity in usable:
            if identity.startswith(kinds):
                return model.model, identity
    if model.cpu_model is not None and cpu_fallback:
        return model.cpu_model, "cpu"
    if not model.model.name.endswith("_edgetpu.tflite"):
        return model.model, "cpu"
    return None, ""


def open_in_child(path: Path, device: str, library: str, prefer: str) -> str:
    """Open `path` on `device` in a child process; "" if it opened, else why not."""
    spec = json.dumps([str(path), device, library, prefer])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgetpud", "doctor", "--open-model", spec],
            capture_output=True,
            text=True,
            timeout=OPEN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return (
            f"no answer within {OPEN_TIMEOUT:.0f} s (a wedged device blocks for ever); "
            "replug it or reboot the box"
        )
    if proc.returncode == 0:
        return ""
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return (
            f"the process opening it died of {name} (libedgetpu aborts this way on a USB "
            "transfer failure); check the device's cable, port and power"
        )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _open_model_child(spec: str) -> int:
    """The child side of open_in_child: open, allocate, close; the error on stderr."""
    from edgetpud import runtime

    path, device, library, prefer = json.loads(spec)
    try:
        runtime.open_session(Path(path), device, library=library, prefer=prefer).close()
    except (ModelError, DeviceError, OSError) as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return 1
    return 0
