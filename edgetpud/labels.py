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

A postprocessor names class `i` with `labels.name(i)`, so a label file must give the
model's class ids, counting any "background" class 0 (the 1001-class ImageNet models
take the 1001-line `imagenet_labels.txt`). `fit_problem` says when it does not.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edgetpud import pathcheck
from edgetpud.errors import ModelError

if TYPE_CHECKING:
    from edgetpud.modelfile import ModelInfo

log = logging.getLogger(__name__)

_WITH_ID = re.compile(r"^\s*(\d+)(?:\s*:\s*|\s+)(\S.*?)\s*$")


class Labels(Mapping[int, str]):
    """Class id → label; `name(i)` falls back to the id as text for unknown classes."""

    def __init__(
        self, labels: Mapping[int, str], source: str = "", *, numbered: bool = False
    ) -> None:
        self._labels = dict(labels)
        self.source = source
        self.numbered = numbered  # the file gave each label's id

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
        return Labels(labels, source, numbered=True)
    return Labels({i: line.strip() for i, line in enumerate(lines)}, source)


# Bounds on a label file. The largest label files in use are ImageNet-21k's (21,843 lines,
# ~300 KB); a file past these is not a label file, and its lines would be published as
# labels in every result.
MAX_LABELS_BYTES = 2 * 1024 * 1024
MAX_LABELS_LINES = 65_536
MAX_LABEL_CHARS = 1024
# Control characters a text label file never holds (tab, newline, carriage return and
# form feed are fine); their presence means a binary file.
_BINARY = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def read_labels_text(path: Path) -> str:
    """The text of label file `path`, or ModelError saying why it is not a label file:
    not a regular file, over MAX_LABELS_BYTES, not UTF-8, binary, more than
    MAX_LABELS_LINES lines or a line over MAX_LABEL_CHARS characters."""
    try:
        data = pathcheck.read_bounded(path, MAX_LABELS_BYTES)
    except FileNotFoundError:
        raise ModelError(f"label file {path} does not exist; fix the labels path") from None
    except pathcheck.NotARegularFile as exc:
        raise ModelError(
            f"label file {path} {exc}; point labels at the model's text label file"
        ) from None
    except pathcheck.TooLarge as exc:
        raise ModelError(
            f"label file {path} is {exc.size:,} bytes, over the {MAX_LABELS_BYTES:,}-byte limit "
            "for a label file (ImageNet-21k's is 300 KB); is it the model's label file?"
        ) from None
    except OSError as exc:
        raise ModelError(f"label file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        binary = b"\0" in data[:4096]
        what = "is binary, not text" if binary else f"is not UTF-8 text (byte {exc.start})"
        fix = "point labels at the model's text label file" if binary else "re-save it as UTF-8"
        raise ModelError(f"label file {path} {what}; {fix}") from None
    found = _BINARY.search(text)
    if found:
        raise ModelError(
            f"label file {path} is binary, not text (control character "
            f"{ord(found.group()):#04x} at character {found.start()}); point labels at the "
            "model's text label file"
        )
    lines = text.splitlines()
    if len(lines) > MAX_LABELS_LINES:
        raise ModelError(
            f"label file {path} has {len(lines):,} lines, over the limit of "
            f"{MAX_LABELS_LINES:,} labels; is it the model's label file?"
        )
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LABEL_CHARS:
            raise ModelError(
                f"label file {path} line {number} is {len(line):,} characters long, over the "
                f"limit of {MAX_LABEL_CHARS} for one label; is it the model's label file?"
            )
    return text


def load_labels(path: str | Path) -> Labels:
    """Read a label file; ModelError saying what to fix when it cannot be read or is not
    a label file (see `read_labels_text`)."""
    path = Path(path)
    labels = parse_labels(read_labels_text(path), str(path))
    if not labels:
        log.warning("label file %s holds no labels; class ids will be shown instead", path)
    return labels


def output_classes(info: ModelInfo, postprocess: str, output: int = 0) -> int | None:
    """How many class ids the model's scores give to a built-in postprocessor, or None
    when its outputs do not say (detection: ids are values, not positions).

    `classify` reads one score per class from output `output` (the last when there are
    fewer); `segment` reads per-class scores from the last dimension of a [1, H, W, C]
    output (a map of class ids tells nothing).
    """
    if not info.outputs:
        return None
    if postprocess == "classify":
        shape = info.outputs[min(max(output, 0), len(info.outputs) - 1)].shape
        size = math.prod(max(d, 1) for d in shape)
        return size if size > 1 else None
    if postprocess == "segment":
        shape = info.outputs[0].shape
        scores = len(shape) == 4 or (len(shape) == 3 and shape[0] != 1)
        return shape[-1] if scores and shape[-1] > 1 else None
    return None


def fit_problem(labels: Labels, classes: int | None) -> str | None:
    """A warning sentence when `labels` do not name the model's `classes` class ids (0 to
    classes - 1), saying what the results will show and what to check; None when they fit.

    Blank lines after the last class are not a misfit. A file one label short (no
    "background" for class 0) or one over (a "background" the model does not have) is
    reported apart: every result would carry the next or previous class's label.
    """
    if not classes or classes < 1 or not labels:
        return None
    source = f"label file {labels.source}" if labels.source else "the label file"
    ids = {i for i, text in labels.items() if i < classes or text.strip()}
    if ids == set(range(classes)):
        return None
    count, named = len(ids), len(ids & set(range(classes)))
    plain = ids == set(range(count))
    first = labels.get(0, "").strip().lower()
    if plain and count == classes - 1 and first != "background":
        fix = (
            'add the line "0 background" and number the other labels from 1'
            if labels.numbered
            else 'add a first line "background"'
        )
        return (
            f"{source} has {count} labels but the model outputs {classes} classes: its class 0 "
            'is likely "background", so every result would carry the label of the class after '
            f"it; {fix}"
        )
    if plain and count == classes + 1 and first == "background":
        fix = (
            'remove "0 background" and number the other labels from 0'
            if labels.numbered
            else 'remove the "background" line'
        )
        return (
            f'{source} has {count} labels, the first "background", but the model outputs '
            f"{classes} classes and has no background class, so every result would carry the "
            f"label of the class before it; {fix}"
        )
    what = f"{count} labels" if plain else f"{count} labels for ids {min(ids)} to {max(ids)}"
    if named < classes:
        effect = f"{classes - named} of the classes will show as numbers"
    else:
        effect = f"{count - named} labels are for ids the model never outputs"
    return (
        f"{source} has {what} but the model outputs {classes} classes ({effect}); is it this "
        "model's label file? Set the model's labels to the file that came with it"
    )
