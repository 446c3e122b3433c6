"""Command line: `edgetpud <verb> ...` (also `python -m edgetpud`).

Each verb's work lives in `edgetpud/commands/<verb>.py`, imported only when the
verb runs, so `edgetpud check-config` never loads pyudev, paho or TFLite.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from edgetpud import __version__
from edgetpud.config import DEFAULT_PATH

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetpud",
        description="Keeps TensorFlow Lite models served on Coral Edge TPUs, over MQTT.",
        epilog="Docs: /usr/share/doc/edgetpud or docs/ in the source tree.",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (overrides daemon.log_level)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb, text, add_options in _verbs():
        add_options(sub.add_parser(verb, help=text))
    return parser


def _config_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--config",
        "-c",
        default=None if required else str(DEFAULT_PATH),
        required=required,
        metavar="PATH",
        help=f"config file (default {DEFAULT_PATH})" if not required else "config file",
    )


def _check_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path",
        metavar="PATH",
        nargs="?",
        default=str(DEFAULT_PATH),
        help=f"config file to check (default {DEFAULT_PATH})",
    )


def _devices_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print device records (schema edgetpud.devices/1)"
    )
    _config_arg(p)


def _plan_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument(
        "--devices",
        metavar="FILE",
        help="device records as printed by `edgetpud devices --json` (default: the devices present now)",
    )


def _infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PATH", help=".tflite model")
    p.add_argument("--labels", metavar="PATH", help="label file")
    p.add_argument(
        "--device",
        default="cpu",
        metavar="ID",
        help='"cpu" (default), "usb", "pci", or a device identity such as usb:2-3.1',
    )
    p.add_argument("--top-k", type=int, default=3, metavar="N", help="classes to print (default 3)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        metavar="S",
        help="detection models: leave out detections scoring below S (default 0.5)",
    )
    p.add_argument(
        "--library",
        default="libedgetpu.so.1",
        metavar="LIB",
        help="Edge TPU runtime library (default libedgetpu.so.1)",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")


def _status_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--fleet", action="store_true", help="every node under the topic prefix")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker")
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh the table in place every SECONDS (default 2) until Ctrl-C",
    )


def _doctor_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument(
        "--json", action="store_true", help="print the checks (schema edgetpud.doctor/1)"
    )
    p.add_argument(
        "--user",
        metavar="NAME",
        help="the user the service runs as (default edgetpud; a drop-in may change it)",
    )
    p.add_argument("--open-model", metavar="SPEC", help=argparse.SUPPRESS)


def _no_options(p: argparse.ArgumentParser) -> None:
    pass


def _verbs() -> list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]]:
    """Each verb, its line in `edgetpud --help` (in this order), and what adds its options."""
    return [
        ("run", "run the service in the foreground (what systemd starts)", _config_arg),
        (
            "check-config",
            "validate a config file; exit 0 valid, 1 invalid, 2 unreadable",
            _check_config_args,
        ),
        ("devices", "show every Edge TPU udev sees, with verdicts and reasons", _devices_args),
        ("plan", "show where each model would run, and why", _plan_args),
        ("infer", "one-shot inference on images; JSON per image on stdout", _infer_args),
        ("status", "print the daemon's retained health as a table", _status_args),
        (
            "doctor",
            "check everything edgetpud needs, in order; OK / WARN / FAIL with the fix",
            _doctor_args,
        ),
        ("version", "print the version", _no_options),
    ]


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), format=LOG_FORMAT, stream=sys.stderr, force=True
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level or "info")
    if args.verb == "version":
        print(f"edgetpud {__version__}")
        return 0
    module = importlib.import_module(f"edgetpud.commands.{args.verb.replace('-', '_')}")
    try:
        code: int = module.main(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
