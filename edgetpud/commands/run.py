"""`edgetpud run --config PATH`: the service in the foreground (what systemd starts)."""

from __future__ import annotations

import argparse
import logging
import sys

from edgetpud import config
from edgetpud.errors import ConfigError, ConfigUnreadableError

log = logging.getLogger(__name__)

EXIT_CONFIG_INVALID = 78  # EX_CONFIG: systemd's RestartPreventExitStatus keeps it from looping


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.config, lenient_plugins=True)
    except ConfigUnreadableError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG_INVALID
    except ConfigError as exc:
        for issue in exc.issues:
            log.error("config: %s", issue)
        log.error("not starting: fix %s (edgetpud check-config shows the same errors)", args.config)
        return EXIT_CONFIG_INVALID
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.daemon.log_level.upper())
    from edgetpud import service

    code = service.run(cfg)
    sys.stderr.flush()
    return code
