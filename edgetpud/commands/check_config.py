"""`edgetpud check-config PATH`: exit 0 valid, 1 invalid, 2 unreadable."""

from __future__ import annotations

import argparse

from edgetpud.commands import load_config


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.path, checking=True)
    if isinstance(cfg, int):
        return cfg
    names = ", ".join(cfg.models) or "no models"
    print(f"{args.path}: valid ({len(cfg.models)} model(s): {names})")
    return 0
