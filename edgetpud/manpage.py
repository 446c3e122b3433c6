"""Build the edgetpud(8) man page from the CLI's own argparse definition.

`python3 -m edgetpud.manpage > edgetpud.8` writes it; the Debian package build
does exactly that, so the page always matches `edgetpud --help`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from edgetpud import __version__
from edgetpud.cli import build_parser
from edgetpud.config import DEFAULT_PATH

SECTION = "8"


def escape(text: str) -> str:
    """Text made safe for roff: backslashes, hyphens, and leading dots or quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [("\\&" + line if line[:1] in (".", "'") else line) for line in text.split("\n")]
    return "\n".join(lines)


def bold(text: str) -> str:
    return f"\\fB{escape(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{escape(text)}\\fR"


def option_label(action: argparse.Action) -> str:
    """`\\fB\\-\\-config\\fR, \\fB\\-c\\fR \\fIPATH\\fR` or `\\fIIMAGE\\fR ...` for positionals."""
    if not action.option_strings:
        name = action.metavar if isinstance(action.metavar, str) else action.dest
        return italic(str(name)) + (" ..." if action.nargs in ("+", "*") else "")
    label = ", ".join(bold(o) for o in sorted(action.option_strings, key=len, reverse=True))
    if action.nargs == 0:
        return label
    if action.choices is not None:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        value = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return f"{label} {italic(value)}"


def option_help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "prog": "edgetpud"}
    return escape(text)


def options(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        out += [".TP", option_label(action), option_help(action)]
    return out


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(verb, one-line help, parser) for every verb, in the order `--help` lists them."""
    found: list[tuple[str, str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for verb, sub in action.choices.items():
                found.append((verb, helps.get(verb, ""), sub))
    return found


def synopsis(verb: str, sub: argparse.ArgumentParser) -> str:
    usage = sub.format_usage().strip()
    usage = usage.removeprefix("usage:").strip()
    usage = " ".join(usage.split())
    return escape(usage)


EXIT_STATUS = (
    (
        "run",
        "0 after a clean stop (SIGTERM, or SIGINT once started); 78 (EX_CONFIG) when the "
        "config is invalid or unreadable, or a file it names (an MQTT password, certificate "
        "or key) cannot be opened at start. The unit's RestartPreventExitStatus=78 keeps "
        "systemd from restarting it into the same error.",
    ),
    ("check-config", "0 valid, 1 invalid, 2 unreadable or not TOML."),
    (
        "devices",
        "0 listed (also when none was found), 1 invalid config, 2 unreadable config or udev "
        "cannot be read.",
    ),
    (
        "plan",
        "0 plan printed, 1 invalid config, 2 unreadable config, a --devices file that cannot "
        "be read or is not device records, or no way to scan devices in this build.",
    ),
    (
        "infer",
        "0 every image answered, 1 otherwise: a bad --top-k, a model, label file or device "
        "that cannot be opened, or any image that failed (the others are still printed).",
    ),
    (
        "status",
        "0 every node found is online, 1 a node is offline, no retained health was found or "
        "the config is invalid, 2 the config is unreadable or the broker cannot be reached or "
        "refuses the connection.",
    ),
    ("version", "0."),
)


def exit_status() -> list[str]:
    """The EXIT STATUS section's body: each verb's codes, then those every verb shares."""
    out: list[str] = []
    for verb, text in EXIT_STATUS:
        out += [".TP", bold(verb), escape(text)]
    out += [
        ".PP",
        escape(
            "Every verb exits 2 for a command-line usage error and 130 when interrupted with "
            "Ctrl-C (run instead stops cleanly and exits 0, once it has loaded its config)."
        ),
    ]
    return out


def build_date() -> str:
    """SOURCE_DATE_EPOCH (reproducible builds) or today."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc)
        if epoch
        else datetime.datetime.now(tz=datetime.timezone.utc)
    )
    return when.strftime("%Y-%m-%d")


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole man page as roff text."""
    parser = parser or build_parser()
    verbs = subcommands(parser)
    lines = [
        f'.TH EDGETPUD {SECTION} "{build_date()}" "edgetpud {__version__}" "System Administration"',
        ".SH NAME",
        "edgetpud \\- " + escape(parser.description or "").rstrip("."),
        ".SH SYNOPSIS",
        f"{bold('edgetpud')} [{bold('--log-level')} {italic('LEVEL')}] {italic('VERB')} [...]",
    ]
    for verb, _help, sub in verbs:
        lines += [".br", synopsis(verb, sub)]
    lines += [
        ".SH DESCRIPTION",
        escape(
            "edgetpud watches the Coral Edge TPUs on this machine (USB Accelerators and "
            "M.2/PCIe modules), keeps every model declared in its configuration running on the "
            "best device it can get, through hotplug, faults and config edits, and speaks MQTT: "
            "results out, requests in, health always."
        ),
        ".PP",
        escape(
            "The service is started by systemd as edgetpud.service (user edgetpud). After editing "
            f"{DEFAULT_PATH}, check it with 'edgetpud check-config' and apply it with "
            "'systemctl reload edgetpud'; an invalid file is refused and the old one kept."
        ),
        ".SH OPTIONS",
        *options(parser),
        ".SH COMMANDS",
    ]
    for verb, help_text, sub in verbs:
        lines += [".SS " + escape(verb), escape(help_text[:1].upper() + help_text[1:]) + "."]
        opts = options(sub)
        if opts:
            lines += [".RS", *opts, ".RE"]
    lines += [
        ".SH FILES",
        ".TP",
        italic(str(DEFAULT_PATH)),
        escape("The configuration (TOML). Every key is described in the file itself."),
        ".TP",
        italic("/var/lib/edgetpud"),
        escape("State kept across restarts (ports that failed to open an Edge TPU)."),
        ".TP",
        italic("/lib/udev/rules.d/60-edgetpud.rules"),
        escape("Gives group plugdev the USB Accelerators and group apex the PCIe modules."),
        ".SH EXIT STATUS",
        *exit_status(),
        ".SH SEE ALSO",
        escape("systemctl(1), journalctl(1), mosquitto_sub(1), /usr/share/doc/edgetpud/"),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
