"""`edgetpud devices [--json] [--config PATH]`: every Edge TPU udev sees, judged.

Prints a tree of buses, hubs and ports (like `lsusb -t`) with each device's
identity, speed, power budget, verdict and reasons; `--json` prints the records
(schema edgetpud.devices/1) that `edgetpud plan --devices FILE` reads.
Exit 0 when listed (even if none was found), 1 for an invalid config, 2 when the
config is unreadable or udev cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgetpud import config as config_mod
from edgetpud.commands import load_config
from edgetpud.config import DEFAULT_PATH, DevicesConfig
from edgetpud.devices import enumerate_devices
from edgetpud.devices.tree import render


def _settings(path: str | None) -> tuple[DevicesConfig, Path, str] | int:
    """The [devices] policy, state folder and the clock power is budgeted for, from the
    config; defaults when none is installed."""
    if path is None or (Path(path) == DEFAULT_PATH and not DEFAULT_PATH.exists()):
        policy, state_dir = DevicesConfig(), config_mod.default_state_dir()
        return policy, state_dir, policy.performance
    cfg = load_config(path)
    if isinstance(cfg, int):
        return cfg
    return cfg.devices, cfg.daemon.state_dir, config_mod.clock_needed(cfg)


def main(args: argparse.Namespace) -> int:
    settings = _settings(getattr(args, "config", None))
    if isinstance(settings, int):
        return settings
    policy, state_dir, clock = settings
    try:
        records = enumerate_devices(policy, state_dir, performance=clock)
    except (OSError, ImportError) as exc:
        print(
            f"edgetpud devices: cannot read udev ({exc}); run it on the host, "
            "with /sys and /run/udev available",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "json", False):
        json.dump([r.to_json() for r in records], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(records))
    return 0
