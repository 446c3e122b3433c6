#!/usr/bin/env python3
"""Fail when a class is over 400 lines or a function over 80 in the daemon's code.

Run by `make lint`: `python3 tools/check_sizes.py [PATH ...]` (default: edgetpud/ and
plugins/edgetpud_plugins/). A class or function counts from its `class`/`def` line to its
last line, docstring included, decorators not. Prints one line per offender and exits 1;
exits 0 when there is none, 2 when a file cannot be read or parsed.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATHS = ("edgetpud", "plugins/edgetpud_plugins")
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 80

# Known offenders, by "<path from the repository root>:<qualified name>". Each is being
# split by its own change; remove its line when that change lands. Add nothing here:
# split the class or function instead.
ALLOWED: frozenset[str] = frozenset()  # none left


class Block(NamedTuple):
    """A class or function: where it starts, what it is called, how long it is."""

    path: Path
    line: int
    kind: str  # "class" or "function"
    name: str  # qualified: Outer.method
    lines: int

    @property
    def limit(self) -> int:
        return MAX_CLASS_LINES if self.kind == "class" else MAX_FUNCTION_LINES

    def where(self) -> str:
        """Its file: the path from the repository root, or as given when outside it."""
        path = self.path.resolve()
        return (path.relative_to(ROOT) if path.is_relative_to(ROOT) else self.path).as_posix()

    def key(self) -> str:
        """Its entry in ALLOWED."""
        return f"{self.where()}:{self.name}"


def blocks(path: Path) -> Iterator[Block]:
    """Every class and function in one file, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def walk(node: ast.AST, prefix: str) -> Iterator[Block]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                end = child.end_lineno or child.lineno
                yield Block(path, child.lineno, kind, name, end - child.lineno + 1)
                yield from walk(child, name + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def python_files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        else:
            yield path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    paths = [Path(a) for a in args] or [ROOT / p for p in DEFAULT_PATHS]
    offenders: list[Block] = []
    allowed_seen: set[str] = set()
    for path in python_files(paths):
        try:
            found = list(blocks(path))
        except (OSError, UnicodeDecodeError, SyntaxError) as exc:
            print(f"{path}: cannot be read as Python ({exc}); fix it, then run again")
            return 2
        for block in found:
            if block.lines <= block.limit:
                continue
            if block.key() in ALLOWED:
                allowed_seen.add(block.key())
            else:
                offenders.append(block)
    for b in offenders:
        print(
            f"{b.where()}:{b.line}: {b.kind} {b.name} is {b.lines} lines "
            f"(limit {b.limit}); split it into smaller, well-named pieces"
        )
    if not args:  # the whole tree was checked: an entry no longer needed is worth a word
        for key in sorted(ALLOWED - allowed_seen):
            print(
                f"note: {key} is within the limits now; remove it from ALLOWED in tools/check_sizes.py"
            )
    return 1 if offenders else 0


if __name__ == "__main__":
    sys.exit(main())
