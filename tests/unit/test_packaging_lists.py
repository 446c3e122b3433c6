"""Every Python package in the tree is listed in pyproject.toml, or the .deb lacks it.

setuptools' explicit `packages` list is what pybuild installs: a new subpackage left
out of it passes every test run from the source tree and breaks the installed service
with `ModuleNotFoundError` (it happened with edgetpud.mqtt).
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_in_the_setuptools_packages_list() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    roots = {"edgetpud": ROOT / "edgetpud", **{
        name: ROOT / path for name, path in tool.get("package-dir", {}).items()
    }}  # fmt: skip
    found = set()
    for name, path in roots.items():
        for init in path.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(path)
            found.add(".".join((name, *rel.parts)))
    assert found - listed == set(), (
        f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    )
    assert listed - found == set(), f"listed but absent: {sorted(listed - found)}"
