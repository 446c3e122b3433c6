"""One module per CLI verb, each with `main(args) -> exit code`."""

from __future__ import annotations

import sys
from pathlib import Path

from edgetpud import config
from edgetpud.errors import ConfigError, ConfigUnreadableError

EXIT_INVALID = 1
EXIT_UNREADABLE = 2


def load_config(
    path: str | Path, *, lenient_plugins: bool = False, checking: bool = False
) -> config.Config | int:
    """The config at `path`, or (after printing why on stderr) the exit code to return:
    1 when it is invalid (every problem with its dotted key), 2 when it cannot be read.

    `checking` is True for `edgetpud check-config` itself, whose summary must not send
    the user to check-config.
    """
    try:
        return config.load(path, lenient_plugins=lenient_plugins, check_files=checking)
    except ConfigUnreadableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(summary(path, len(exc.issues), checking=checking), file=sys.stderr)
        return EXIT_INVALID


def summary(path: str | Path, problems: int, *, checking: bool = False) -> str:
    """The line after the problems: what to do next. check-config itself asks for a fix and
    a rerun; the other verbs point at check-config to check the fix before trying again."""
    if checking:
        return f"{path}: {problems} problem(s); fix them and run edgetpud check-config {path} again"
    return (
        f"{path}: {problems} problem(s); fix them (edgetpud check-config {path} shows the same) "
        "and try again"
    )
