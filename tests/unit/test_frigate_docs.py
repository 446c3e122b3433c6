"""docs/frigate.md's edgetpud config is a valid config, and names what Frigate's names."""

from __future__ import annotations

import re
from pathlib import Path

from edgetpud import config

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "frigate.md").read_text()


def test_the_documented_frigate_section_is_valid_and_matches_frigates_block(
    tmp_path: Path,
) -> None:
    [toml] = re.findall(r"```toml\n(.*?)```", DOC, re.S)
    [yaml] = [b for b in re.findall(r"```yaml\n(.*?)```", DOC, re.S) if "detectors:" in b]
    for name in re.findall(r"/var/lib/edgetpud/models/([\w.]+)", toml):
        (tmp_path / name).write_bytes(bytes(4) + b"TFL3" + bytes(24))  # the marker checked
    text = toml.replace("/var/lib/edgetpud/models/", f"{tmp_path}/")
    path = tmp_path / "edgetpud.toml"
    path.write_text(text)
    cfg = config.load(path)
    assert cfg.models[cfg.frigate.model].postprocess.type == "detect"
    endpoint = re.search(r"endpoint: (\S+)", yaml)
    assert endpoint is not None and endpoint.group(1) == cfg.frigate.endpoint
    timeout = re.search(r"request_timeout_ms: (\d+)", yaml)
    assert timeout is not None and int(timeout.group(1)) == round(
        cfg.frigate.request_timeout * 1000
    )
