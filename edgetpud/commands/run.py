"""`edgetpud run --config PATH`: the service in the foreground (what systemd starts)."""

from __future__ import annotations

import argparse
import logging
import sys

from edgetpud.commands import load_config

log = logging.getLogger(__name__)

EXIT_CONFIG_INVALID = 78  # EX_CONFIG: the unit's RestartPreventExitStatus keeps it from looping


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, lenient_plugins=True)
    if isinstance(cfg, int):
        log.error("not starting: the config %s is unusable (see above)", args.config)
        return EXIT_CONFIG_INVALID
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.daemon.log_level.upper())
    from edgetpud import app
    from edgetpud.errors import ConfigUnreadableError

    try:
        code = app.run(cfg, log_level_pinned=args.log_level is not None)
    except ConfigUnreadableError as exc:  # a file the config names, unusable on opening
        log.error("not starting: %s", exc)
        return EXIT_CONFIG_INVALID
    sys.stderr.flush()
    return code
