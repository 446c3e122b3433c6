"""Write a config file and run `edgetpud check-config` on it in-process, as a user would."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgetpud.cli import main


def write(folder: Path, text: str) -> Path:
    """`text` (dedented) as folder/edgetpud.toml."""
    path = folder / "edgetpud.toml"
    path.write_text(textwrap.dedent(text))
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """check-config's exit code, stdout and stderr."""
    code = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err
