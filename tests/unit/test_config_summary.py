"""The line after a refused config's problems says what to do next, without sending
`edgetpud check-config` users back to check-config."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetpud.cli import main
from edgetpud.commands import load_config

BROKEN = '[mqtt]\nhots = "x"\nport = "1883"\n'


def broken(tmp_path: Path) -> Path:
    path = tmp_path / "edgetpud.toml"
    path.write_text(BROKEN)
    return path


def test_check_config_asks_for_a_fix_and_a_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = broken(tmp_path)
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"{path}: 2 problem(s); fix them and run edgetpud check-config {path} again"
    assert not any("shows the same" in line for line in err)
    assert any(line.startswith("mqtt.hots: ") for line in err[:-1])


def test_other_verbs_point_at_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = broken(tmp_path)
    assert main(["plan", "--config", str(path)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"{path}: 2 problem(s); fix them (edgetpud check-config {path} shows the same) "
        "and try again"
    )


def test_the_caller_can_say_which_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken(tmp_path)
    assert load_config(path, checking=True) == 1
    assert (
        capsys.readouterr().err.splitlines()[-1].endswith(f"run edgetpud check-config {path} again")
    )
    assert load_config(path) == 1  # the default: another verb
    assert "shows the same" in capsys.readouterr().err.splitlines()[-1]
