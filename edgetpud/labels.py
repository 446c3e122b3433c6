"""Label files, as Coral ships them.

Two layouts exist and both are accepted, even mixed in one file:

- one label per line, the line number (from 0) being the class id
  (`imagenet_labels.txt`: "background", "tench, Tinca tinca", ...);
- a leading integer id, then whitespace or ":" and the label
  (`coco_labels.txt` in some releases: "0  person", "87  teddy bear"); ids may
  have gaps.

Blank lines are skipped in the id form and count as an unnamed class in the
plain form. A label that is itself only a number stays a label only in the plain
form.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from edgetpud.errors import ModelError

log = logging.getLogger(__name__)

_WITH_ID = re.compile(r"^\s*(\d+)(?:\s*:\s*|\s+)(\S.*?)\s*$")


class Labels(Mapping[int, str]):
    """Class id → label; `name(i)` falls back to the id as text for unknown classes."""

    def __init__(self, labels: Mapping[int, str], source: str = "") -> None:
        self._labels = dict(labels)
        self.source = source

    def __getitem__(self, key: int) -> str:
        return self._labels[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def name(self, class_id: int) -> str:
        return self._labels.get(class_id, str(class_id))

    def __repr__(self) -> str:
        return f"Labels({len(self)} labels from {self.source or 'memory'})"


def parse_labels(text: str, source: str = "") -> Labels:
    """Parse label-file text; ids come from the lines when every non-blank line has one."""
    lines = text.splitlines()
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    non_blank = [line for line in lines if line.strip()]
    matches = [_WITH_ID.match(line) for line in non_blank]
    if non_blank and all(matches):
        labels: dict[int, str] = {}
        for m in matches:
            assert m is not None
            labels[int(m.group(1))] = m.group(2)
        return Labels(labels, source)
    return Labels({i: line.strip() for i, line in enumerate(lines)}, source)


def load_labels(path: str | Path) -> Labels:
    """Read a label file; ModelError saying what to fix when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"label file {path} does not exist; fix the labels path") from None
    except UnicodeDecodeError:
        raise ModelError(f"label file {path} is not UTF-8 text; re-save it as UTF-8") from None
    except OSError as exc:
        raise ModelError(f"label file {path} cannot be read: {exc.strerror}") from None
    labels = parse_labels(text, str(path))
    if not labels:
        log.warning("label file %s holds no labels; class ids will be shown instead", path)
    return labels
