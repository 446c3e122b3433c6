"""`edgetpud check-config PATH`: exit 0 valid, 1 invalid, 2 unreadable."""

from __future__ import annotations

import argparse
import sys

from edgetpud import config
from edgetpud.errors import ConfigError, ConfigUnreadableError


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.path)
    except ConfigUnreadableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{args.path}: {len(exc.issues)} problem(s); nothing was changed", file=sys.stderr)
        return 1
    names = ", ".join(cfg.models) or "no models"
    print(f"{args.path}: valid ({len(cfg.models)} model(s): {names})")
    return 0
