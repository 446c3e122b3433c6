"""The TFLite runtime's and libedgetpu's versions, as doctor and the health snapshot show them.

libedgetpu's version is read through its C API (`edgetpu_version()`) in a child process, here
from the test library, which answers as libedgetpu 16.0 does ("..., RuntimeVersion(14)").
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgetpud import config, versions


def _cfg(tmp_path: Path, library: str) -> config.Config:
    path = tmp_path / "edgetpud.toml"
    path.write_text(f'[runtime]\nlibrary = "{library}"\n')
    return config.load(path)


def test_health_section_names_both_versions(tmp_path: Path, fake_lib: Path) -> None:
    component = versions.Versions(_cfg(tmp_path, str(fake_lib)))
    component.start()
    section = component.health()
    assert section is not None
    assert section["tflite"] == {"name": "tflite_runtime", "version": "2.14.0"}
    assert section["libedgetpu"]["version"] == "BuildLabel(fake_edgetpu), RuntimeVersion(14)"
    assert section["libedgetpu"]["library"] == str(fake_lib)
    assert section["pairing"]["verdict"] == "OK"  # no Debian package: nothing known against it


def test_a_missing_libedgetpu_is_reported_not_raised(tmp_path: Path) -> None:
    missing = str(tmp_path / "libedgetpu.so.1")
    component = versions.Versions(_cfg(tmp_path, missing))
    component.start()
    section = component.health()
    assert section is not None
    assert "libedgetpu1-std" in section["libedgetpu"]["error"], section
    assert section["tflite"]["version"] == "2.14.0"
    assert "pairing" not in section


def test_reload_rereads_when_the_library_changes(
    tmp_path: Path, fake_lib: Path, caplog: pytest.LogCaptureFixture
) -> None:
    component = versions.Versions(_cfg(tmp_path, str(tmp_path / "none.so")))
    component.start()
    assert "error" in component.health()["libedgetpu"]  # type: ignore[index]
    with caplog.at_level(logging.INFO, logger="edgetpud.versions"):
        component.apply_config(_cfg(tmp_path, str(fake_lib)))
    assert component.health()["libedgetpu"]["version"].endswith("RuntimeVersion(14)")  # type: ignore[index]
    assert "versions: tflite_runtime 2.14.0; libedgetpu BuildLabel(fake_edgetpu)" in caplog.text


@pytest.mark.parametrize(
    ("package", "runtime", "status"),
    [
        ("16.0", "2.14.0", "WARN"),  # Coral's own build: known to fail with 2.12 and newer
        ("16.0", "2.11.0", "OK"),
        ("16.0tf2.14.0-1", "2.14.0", "OK"),
        ("16.0tf2.17.1-1", "2.14.0", "WARN"),
    ],
)
def test_pairing_warns_about_pairs_known_not_to_work(
    package: str, runtime: str, status: str
) -> None:
    verdict, detail, fix = versions.pairing(package, "tflite_runtime", runtime)
    assert verdict == status, detail
    assert bool(fix) == (status == "WARN")
