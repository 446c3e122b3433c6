"""Validation of TOML tables into frozen dataclasses.

One machinery serves the core config and every plugin's own options: a config
class is a frozen dataclass whose fields are declared with `option()`, carrying a
one-line description, bounds and checks. `load_table()` turns a TOML table into an
instance, collecting every problem with its dotted key path instead of stopping at
the first; `describe()` lists the options for generated docs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from edgetpud.errors import ConfigIssue
from edgetpud.pathcheck import not_a_file

T = TypeVar("T")
Check = Callable[[Any], "str | None"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_INVALID = object()
SHOW_CHARS = 60  # a value longer than this is cut in messages


def option(
    doc: str,
    default: Any = dataclasses.MISSING,
    *,
    kind: Literal["duration", "path", "file", "dir", ""] = "",
    minimum: float | None = None,
    maximum: float | None = None,
    check: Check | None = None,
) -> Any:
    """Declare a config field: `doc` is the one-line description shown in docs.

    kind: "duration" accepts "250ms"/"10s"/"2m"/"1h" or a number of seconds;
    "path" resolves a relative path against the config file's folder; "file"
    and "dir" do the same and require it to exist as that.
    """
    metadata = {"doc": doc, "kind": kind, "min": minimum, "max": maximum, "check": check}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a frozen value as default")
    return field(default=default, metadata=metadata)


def parse_duration(value: Any) -> float:
    """Seconds from "250ms", "10s", "2m", "1h" or a plain number; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration")
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an integer past 1e308
            raise ValueError("a duration") from None
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError("a duration")


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """A ' (did you mean "x"?)' suffix when a choice is close to `word`."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def show(value: Any) -> str:
    """A TOML-ish rendering of a value for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, str) and len(value) > SHOW_CHARS:
        return f'{json.dumps(value[:SHOW_CHARS])[:-1]}..." ({len(value):,} characters)'
    if isinstance(value, int) and len(str(value)) > 24:
        return f"a {len(str(value))}-digit number"
    if isinstance(value, (str, int, float)):
        return json.dumps(value)
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class Context:
    """Where relative paths start, and where problems are collected."""

    base_dir: Path = field(default_factory=Path.cwd)
    issues: list[ConfigIssue] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(path, message))


def fields_of(cls: type[Any]) -> Iterator[tuple[dataclasses.Field[Any], Any]]:
    """(field, resolved type) for each init field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init:
            yield f, hints[f.name]


def load_table(
    cls: type[T],
    data: Any,
    path: str,
    ctx: Context,
    *,
    extra: Mapping[str, Any] | None = None,
    ignore: frozenset[str] = frozenset(),
) -> T | None:
    """Validate TOML table `data` into `cls`; None (with issues in ctx) when invalid.

    `extra` supplies values for fields the caller validated itself; keys in
    `ignore` are accepted but not passed to `cls`.
    """
    if not isinstance(data, dict):
        ctx.error(path, f"must be a table, got {show(data)}")
        return None
    known = {f.name: (f, hint) for f, hint in fields_of(cls)}
    supplied = dict(extra or {})
    ok = True
    for key in data:
        if key not in known and key not in ignore:
            ctx.error(join(path, key), "unknown key" + did_you_mean(key, [*known, *ignore]))
            ok = False
    values: dict[str, Any] = {}
    for name, (f, hint) in known.items():
        key_path = join(path, name)
        if name in supplied:
            values[name] = supplied[name]
        elif name in data:
            value = convert(hint, f.metadata, data[name], key_path, ctx)
            if value is _INVALID:
                ok = False
            else:
                values[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            ctx.error(key_path, "is required" + _doc_hint(f))
            ok = False
    return cls(**values) if ok else None


def _doc_hint(f: dataclasses.Field[Any]) -> str:
    doc = f.metadata.get("doc", "")
    return f" ({doc[0].lower()}{doc[1:].rstrip('.')})" if doc else ""


def _optional_inner(hint: Any) -> Any:
    """X for Optional[X] / X | None, else None."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


_PATH_KINDS = ("path", "file", "dir")


def convert(hint: Any, md: Mapping[str, Any], value: Any, path: str, ctx: Context) -> Any:
    """Check and convert one TOML value against a field's type and metadata.

    Each problem is reported to `ctx` with its dotted key; the result is then `_INVALID`.
    """
    inner = _optional_inner(hint)
    if inner is not None:
        hint = inner
    kind = md.get("kind", "")
    origin = typing.get_origin(hint)
    if origin is tuple and kind in _PATH_KINDS:
        return _convert_array(
            md, value, path, ctx, item_type=str, item_md={"kind": kind}, noun="paths"
        )
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        result = load_table(hint, value, path, ctx)
        return _INVALID if result is None else result
    if kind == "duration":
        return _convert_duration(md, value, path, ctx)
    if kind in _PATH_KINDS:
        return _convert_path(kind, md, value, path, ctx)
    if origin is Literal:
        return _convert_choice(typing.get_args(hint), md, value, path, ctx)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        noun = f"{_noun(item_type)}s"
        return _convert_array(md, value, path, ctx, item_type=item_type, item_md={}, noun=noun)
    return _convert_scalar(hint, md, value, path, ctx)


def _convert_array(
    md: Mapping[str, Any],
    value: Any,
    path: str,
    ctx: Context,
    *,
    item_type: Any,
    item_md: Mapping[str, Any],
    noun: str,
) -> Any:
    """A TOML array as a tuple, each item converted as `item_type`; the first bad item
    makes the whole array invalid."""
    if not isinstance(value, list):
        ctx.error(path, f"must be an array of {noun}, got {show(value)}")
        return _INVALID
    items = []
    for i, item in enumerate(value):
        converted = convert(item_type, item_md, item, f"{path}[{i}]", ctx)
        if converted is _INVALID:
            return _INVALID
        items.append(converted)
    return _checked(tuple(items), md, path, ctx)


def _convert_duration(md: Mapping[str, Any], value: Any, path: str, ctx: Context) -> Any:
    try:
        seconds = parse_duration(value)
    except ValueError:
        ctx.error(path, f'must be a duration such as "250ms", "10s" or "2m", got {show(value)}')
        return _INVALID
    return _bounded(seconds, md, path, ctx, unit="s")


def _convert_path(kind: str, md: Mapping[str, Any], value: Any, path: str, ctx: Context) -> Any:
    """A path, relative to the config file's folder; a `file` must be a regular file and a
    `dir` a folder, now."""
    if not isinstance(value, str) or not value:
        ctx.error(path, f"must be a path (a non-empty string), got {show(value)}")
        return _INVALID
    p = Path(value).expanduser()
    p = p if p.is_absolute() else ctx.base_dir / p
    what = not_a_file(p) if kind == "file" else None
    if what is not None:
        ctx.error(path, f"{p} {what}; {_file_fix(what)}")
        return _INVALID
    if kind == "dir" and not p.is_dir():
        ctx.error(path, f"{p} is not a folder; fix the path or create it")
        return _INVALID
    return _checked(p, md, path, ctx)


def _file_fix(what: str) -> str:
    """What to do about a `file` option whose path is `what` (pathcheck.not_a_file's words)."""
    if "permission denied" in what:
        return "let the user running edgetpud into the folders above it"
    if what.startswith(("does not exist", "is a folder", "is a symbolic link to")):
        return "fix the path or create the file"
    return "point it at a regular file"


def _convert_choice(
    choices: tuple[Any, ...], md: Mapping[str, Any], value: Any, path: str, ctx: Context
) -> Any:
    if value not in choices or isinstance(value, bool):
        listed = ", ".join(show(c) for c in choices)
        hint_text = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        ctx.error(path, f"must be one of {listed}, got {show(value)}{hint_text}")
        return _INVALID
    return _checked(value, md, path, ctx)


def _convert_scalar(hint: Any, md: Mapping[str, Any], value: Any, path: str, ctx: Context) -> Any:
    """A boolean, an integer, a number or a string; TOML's true and false are none of the
    others."""
    if hint is bool:
        if not isinstance(value, bool):
            ctx.error(path, f"must be true or false, got {show(value)}")
            return _INVALID
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.error(path, f"must be an integer{_range_text(md)}, got {show(value)}")
            return _INVALID
        return _bounded(value, md, path, ctx)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.error(path, f"must be a number{_range_text(md)}, got {show(value)}")
            return _INVALID
        try:
            number = float(value)
        except OverflowError:
            ctx.error(path, f"must be a number{_range_text(md)}, got {_num(value)}")
            return _INVALID
        return _bounded(number, md, path, ctx)
    if hint is str:
        if not isinstance(value, str):
            ctx.error(path, f"must be a string, got {show(value)}")
            return _INVALID
        return _checked(value, md, path, ctx)
    raise TypeError(f"config field {path} has an unsupported type {hint!r}")


def _noun(hint: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(hint, "value")


def _range_text(md: Mapping[str, Any], unit: str = "") -> str:
    lo, hi = md.get("min"), md.get("max")
    if lo is not None and hi is not None:
        return f" from {_num(lo)}{unit} to {_num(hi)}{unit}"
    if lo is not None:
        return f" ≥ {_num(lo)}{unit}"
    if hi is not None:
        return f" ≤ {_num(hi)}{unit}"
    return ""


def _num(x: float) -> str:
    if isinstance(x, int):  # TOML integers have any size; floats past 1e308 overflow
        text = str(x)
        return text if len(text) <= 24 else f"a {len(text)}-digit number"
    return str(int(x)) if x.is_integer() else str(x)


def _bounded(value: float, md: Mapping[str, Any], path: str, ctx: Context, unit: str = "") -> Any:
    lo, hi = md.get("min"), md.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        noun = "a duration" if unit else ("an integer" if isinstance(value, int) else "a number")
        ctx.error(path, f"must be {noun}{_range_text(md, unit)}, got {_num(value)}{unit}")
        return _INVALID
    return _checked(value, md, path, ctx)


def _checked(value: Any, md: Mapping[str, Any], path: str, ctx: Context) -> Any:
    check = md.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            ctx.error(path, problem)
            return _INVALID
    return value


@dataclass(frozen=True)
class OptionDoc:
    """One option of a config class, as shown in generated documentation."""

    name: str
    type: str
    default: str
    doc: str


def describe(cls: type[Any]) -> list[OptionDoc]:
    """The options of a config class with type, default and description, for docs."""
    out = []
    for f, hint in fields_of(cls):
        kind = f.metadata.get("kind", "")
        inner = _optional_inner(hint) or hint
        if kind == "duration":
            type_name = "duration"
        elif kind in ("path", "file", "dir"):
            type_name = "array of paths" if typing.get_origin(inner) is tuple else "path"
        elif typing.get_origin(inner) is Literal:
            type_name = " | ".join(show(c) for c in typing.get_args(inner))
        elif typing.get_origin(inner) is tuple:
            type_name = f"array of {_noun(typing.get_args(inner)[0])}s"
        else:
            type_name = _noun(inner) if inner in (str, int, float, bool) else "table"
        if f.default is dataclasses.MISSING:
            default = "required"
        elif f.default is None:
            default = "unset"
        elif kind == "duration" and isinstance(f.default, (int, float)):
            default = f'"{_num(f.default)}s"'
        elif isinstance(f.default, tuple):
            default = json.dumps(list(f.default))
        elif dataclasses.is_dataclass(f.default) and not isinstance(f.default, type):
            default = _table_default(f.default)
        else:
            default = show(str(f.default) if isinstance(f.default, Path) else f.default)
        out.append(OptionDoc(f.name, type_name, default, f.metadata.get("doc", "")))
    return out


def _table_default(value: Any) -> str:
    """A sub-table default as the TOML keys it amounts to, e.g. `type = "mqtt"`: its fields
    that differ from their own defaults (a plugin table's options and error stay unset)."""
    keys = [
        f"{f.name} = {show(getattr(value, f.name))}"
        for f in dataclasses.fields(value)
        if f.init and getattr(value, f.name) != f.default
    ]
    return ", ".join(keys) or "empty table"


def options_table(cls: type[Any]) -> list[str]:
    """The options of a config class as Markdown table lines, for generated docs."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    for opt in describe(cls):
        lines.append(f"| `{opt.name}` | {cell(opt.type)} | {cell(opt.default)} | {cell(opt.doc)} |")
    return lines
