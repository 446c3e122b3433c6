"""One module per CLI verb, each with `main(args) -> exit code`."""

from __future__ import annotations

import sys
from pathlib import Path

from edgetpud import config
from edgetpud.errors import ConfigError, ConfigUnreadableError

EXIT_INVALID = 1
EXIT_UNREADABLE = 2


def load_config(path: str | Path, *, lenient_plugins: bool = False) -> config.Config | int:
    """The config at `path`, or (after printing why on stderr) the exit code to return:
    1 when it is invalid (every problem with its dotted key), 2 when it cannot be read."""
    try:
        return config.load(path, lenient_plugins=lenient_plugins)
    except ConfigUnreadableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(
            f"{path}: {len(exc.issues)} problem(s); fix them (edgetpud check-config {path} "
            "shows the same) and try again",
            file=sys.stderr,
        )
        return EXIT_INVALID
