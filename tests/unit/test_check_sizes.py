"""tools/check_sizes.py (run by `make lint`) names each class over 400 lines and each
function over 80, and fails; at the limit it is quiet and passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "check_sizes.py"


def check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def function(name: str, lines: int, indent: str = "") -> str:
    """A function of exactly `lines` lines, counting its `def` line."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
    return f"{indent}def {name}() -> int:\n{body}{indent}    return 0\n"


def klass(name: str, lines: int) -> str:
    """A class of exactly `lines` lines, counting its `class` line; no function over 80."""
    body = "".join(f"    a{i} = {i}\n" for i in range(lines - 1))
    return f"class {name}:\n{body}"


def test_a_function_of_81_lines_is_named_and_fails(tmp_path: Path) -> None:
    source = tmp_path / "long.py"
    source.write_text("import os\n\n\n" + function("too_long", 81))
    result = check(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{source.as_posix()}:4: function too_long is 81 lines (limit 80)" in result.stdout


def test_a_function_of_80_lines_passes(tmp_path: Path) -> None:
    (tmp_path / "fits.py").write_text(function("just_fits", 80))
    result = check(tmp_path)
    assert (result.returncode, result.stdout) == (0, ""), result.stderr


def test_a_method_is_named_with_its_class(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("class Lane:\n" + function("loop", 81, indent="    "))
    result = check(tmp_path / "m.py")
    assert result.returncode == 1
    assert "function Lane.loop is 81 lines" in result.stdout


def test_a_class_over_400_lines_fails_and_one_of_400_passes(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text(klass("Big", 401) + "\n\n" + klass("Fits", 400))
    result = check(tmp_path)
    assert result.returncode == 1
    assert "class Big is 401 lines (limit 400)" in result.stdout
    assert "Fits" not in result.stdout


def test_every_offender_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(function("one", 90) + "\n\n" + function("two", 81))
    (tmp_path / "b.py").write_text(function("three", 200))
    result = check(tmp_path)
    assert result.returncode == 1
    named = [line.split(" is ")[0].rsplit(" ", 1)[1] for line in result.stdout.splitlines()]
    assert named == ["one", "two", "three"]


def test_a_file_that_is_not_python_is_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def f(:\n")
    result = check(tmp_path)
    assert result.returncode == 2
    assert "broken.py: cannot be read as Python" in result.stdout


def test_the_daemon_and_its_plugins_keep_the_limits() -> None:
    """What `make lint` runs: edgetpud/ and plugins/edgetpud_plugins/, less the allow-list
    of splits under way."""
    result = check()
    assert result.returncode == 0, result.stdout
