"""Label files as Coral ships them: plain lines, or leading ids (with gaps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetpud.errors import ModelError
from edgetpud.labels import load_labels, parse_labels


def test_plain_lines_are_numbered_from_zero() -> None:
    labels = parse_labels("background\ntench, Tinca tinca\ngoldfish\n")
    assert labels[0] == "background"
    assert labels[1] == "tench, Tinca tinca"
    assert len(labels) == 3


def test_leading_ids_with_gaps_and_colons() -> None:
    labels = parse_labels("0  person\n1  bicycle\n87  teddy bear\n90: toothbrush\n")
    assert labels[0] == "person"
    assert labels[87] == "teddy bear"
    assert labels[90] == "toothbrush"
    assert 2 not in labels
    assert labels.name(2) == "2"


def test_a_plain_file_with_a_numeric_start_stays_plain() -> None:
    labels = parse_labels("background\n7 up\nsprite\n")
    assert labels[1] == "7 up"
    assert labels[2] == "sprite"


def test_bom_and_windows_line_ends() -> None:
    labels = parse_labels("\ufeff0 cat\r\n1 dog\r\n")
    assert dict(labels) == {0: "cat", 1: "dog"}


def test_missing_file_says_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist; fix the labels path"):
        load_labels(tmp_path / "nope.txt")
