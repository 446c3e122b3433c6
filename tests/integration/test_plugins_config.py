"""Plugin options in the config: errors carry their dotted path; broken plugins disable one model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgetpud import cli, config, plugin_docs, plugins

ROOT = Path(__file__).resolve().parents[2]

BROKEN = {
    "source.path": ('type = "directory"\npath = "missing"', "does not exist|is not a folder"),
    "source.after": ('type = "directory"\npath = "."\nafter = "mvoe"', 'did you mean "move"'),
    "source.patterns": ('type = "directory"\npath = "."\npatterns = "*.jpg"', "array of strings"),
    "source.settle": ('type = "directory"\npath = "."\nsettle = "soon"', "duration"),
    "source.rate": ('type = "synthetic"\nrate = -1', "from 0 to 100000"),
    "source.pattern": ('type = "synthetic"\npattern = "stripes"', "must be one of"),
    "source.resize": ('type = "mqtt"\nresize = "letterbx"', 'did you mean "letterbox"'),
    "source.colour": ('type = "synthetic"\ncolour = 1', "unknown key"),
    "source.type": ('type = "ftp"', 'no source plugin named "ftp"'),
    "postprocess.top_k": ('type = "classify"\ntop_k = 0', "from 1 to 1000"),
    "postprocess.threshold": ('type = "detect"\nthreshold = "high"', "must be a number"),
    "postprocess.classes": ('type = "detect"\nclasses = [1, "cat"]', "classes\\[1\\]"),
    "postprocess.ignore": ('type = "segment"\nignore = 0', "array of integers"),
    "postprocess.max_list": ('type = "raw"\nmax_list = 1.5', "integer"),
}


def write_config(folder: Path, table: str, body: str) -> Path:
    (folder / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3")
    path = folder / "edgetpud.toml"
    path.write_text(f'[models.m]\nmodel = "m.tflite"\n\n[models.m.{table}]\n{body}\n')
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("key", sorted(BROKEN))
def test_each_plugin_config_error_shows_its_dotted_path(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    body, message = BROKEN[key]
    path = write_config(tmp_path, key.split(".", maxsplit=1)[0], body)
    assert cli.main(["check-config", str(path)]) == 1
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith(f"models.m.{key}")]
    assert lines, stderr
    assert any(re.search(message, line) for line in lines), lines


def test_check_config_command_exits_1_naming_the_plugin_option(tmp_path: Path) -> None:
    path = write_config(tmp_path, "postprocess", 'type = "classify"\ntop_k = "three"')
    proc = subprocess.run(
        [sys.executable, "-m", "edgetpud", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "models.m.postprocess.top_k: must be an integer" in proc.stderr


def test_camera_without_opencv_is_refused_with_the_install_hint(tmp_path: Path) -> None:
    if plugins.registry().statuses["camera"].state == "loaded":
        pytest.skip("OpenCV is installed here")
    path = write_config(tmp_path, "source", 'type = "camera"')
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    [issue] = err.value.issues
    assert issue.path == "models.m.source"
    assert "pip install opencv-python-headless" in issue.message


def test_lenient_loading_disables_only_the_models_whose_plugin_is_broken(tmp_path: Path) -> None:
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3")
    path = tmp_path / "edgetpud.toml"
    path.write_text(
        '[models.ok]\nmodel = "m.tflite"\n[models.ok.postprocess]\ntype = "classify"\n\n'
        '[models.gone]\nmodel = "m.tflite"\n[models.gone.postprocess]\ntype = "yolo"\n'
    )
    path.chmod(0o644)
    with pytest.raises(config.ConfigError):
        config.load(path)
    registry = plugins.discover()
    cfg = config.load(path, registry=registry, lenient_plugins=True)
    assert cfg.models["ok"].postprocess.options is not None
    assert cfg.models["gone"].postprocess.options is None
    assert cfg.models["gone"].postprocess.error.startswith("models.gone.postprocess.type: ")
    assert registry.statuses["yolo"].state == "load_error"


def test_the_committed_plugin_reference_matches_the_code() -> None:
    generated = plugin_docs.render(plugins.discover())
    committed = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert committed == generated, (
        "docs/plugins.md is out of date: run `python -m edgetpud.plugin_docs > docs/plugins.md`"
    )
    for name in (
        "mqtt",
        "directory",
        "synthetic",
        "camera",
        "classify",
        "detect",
        "segment",
        "raw",
    ):
        assert f"### `{name}`" in committed
