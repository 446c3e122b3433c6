"""`edgetpud plan --config PATH [--devices FILE]`: where each model would run, and why.

Prints the plan as JSON (schema edgetpud.plan/1). Exit 0 on success, 1 when the
config is invalid (dotted key paths, like check-config), 2 when a file is unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgetpud import config, placement
from edgetpud.commands import load_config
from edgetpud.devices.model import DeviceInfo
from edgetpud.errors import EdgetpudError, ModelError


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if isinstance(cfg, int):
        return cfg
    try:
        devices = read_devices(Path(args.devices)) if args.devices else present_devices(cfg)
    except EdgetpudError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    specs = [spec_for(name, model, cfg) for name, model in cfg.models.items()]
    result = placement.plan(devices, specs)
    out = result.to_json()
    out.pop("moves")  # nothing runs in this process: every placement would be a start
    print(json.dumps(out, indent=2))
    return 0


def spec_for(name: str, model: config.ModelConfig, cfg: config.Config) -> placement.ModelSpec:
    """Inspect the model file; a model that cannot be read is planned as disabled."""
    from edgetpud import modelfile

    try:
        info = modelfile.inspect_model(model.model)
    except ModelError as exc:
        spec = placement.spec_from_config(name, model, cfg, None)
        return placement.ModelSpec(**{**spec.__dict__, "disabled_reason": str(exc)})
    return placement.spec_from_config(name, model, cfg, info)


def read_devices(path: Path) -> list[DeviceInfo]:
    """Device records from a file written by `edgetpud devices --json`."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgetpudError(
            f"{path}: no such file; write one with `edgetpud devices --json > {path}`"
        ) from None
    except OSError as exc:
        raise EdgetpudError(f"{path}: cannot be read: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgetpudError(
            f"{path}: not JSON ({exc}); expected the output of `edgetpud devices --json`"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("devices"), list):
        data = data["devices"]
    if not isinstance(data, list):
        raise EdgetpudError(
            f"{path}: expected a JSON list of device records from `edgetpud devices --json`"
        )
    devices = []
    for i, record in enumerate(data):
        try:
            devices.append(DeviceInfo.from_json(record))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EdgetpudError(
                f"{path}: record {i} is not a device record ({exc}); regenerate the file with "
                "`edgetpud devices --json`"
            ) from None
    return devices


def present_devices(cfg: config.Config) -> list[DeviceInfo]:
    """The Edge TPUs udev sees now, judged by the config's device policy."""
    try:
        from edgetpud.devices import enumerate_devices
    except ImportError as exc:
        raise EdgetpudError(
            f"cannot scan devices in this build ({exc}); pass --devices FILE with records "
            "from `edgetpud devices --json`"
        ) from None
    try:
        found: list[DeviceInfo] = enumerate_devices(
            cfg.devices, cfg.daemon.state_dir, performance=config.clock_needed(cfg)
        )
    except OSError as exc:
        raise EdgetpudError(
            f"cannot read udev ({exc}); run it on the host, with /sys and /run/udev "
            "available, or pass --devices FILE with records from `edgetpud devices --json`"
        ) from None
    return found
