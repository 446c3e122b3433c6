"""Property-based fuzzing of the config loader: 10,000 documents, only ConfigError escapes.

`config.parse` gets TOML-shaped data built from the real section and key names
(plus typos, wrong types, odd values): it returns a Config or raises ConfigError
whose every issue names a dotted key path and says what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetpud import config
from edgetpud.errors import ConfigError, ConfigUnreadableError
from tests.support.examples import examples

SECTION_KEYS: dict[str, list[str]] = {
    name: list(cls.__dataclass_fields__) for name, cls in config.SECTIONS.items()
}
MODEL_KEYS = list(config.ModelConfig.__dataclass_fields__)
PLUGIN_TYPES = ["mqtt", "raw", "classify", "detect", "directory", "synthetic", "nope", ""]

scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1s", "250ms", "-3s", "5 m", "x", "/dev/null", "usb:2-1", "pci", "max"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=2),
    st.dictionaries(st.sampled_from(["type", "x", ""]), scalars, max_size=2),
)


def _keys(known: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(known), st.sampled_from(known).map(lambda k: k + "s"), st.text(max_size=8)
    )


def _table(known: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(_keys(known), values, max_size=3)


plugin_table = st.one_of(
    values,
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(PLUGIN_TYPES), values)}).flatmap(
        lambda d: st.dictionaries(st.text(max_size=8), values, max_size=2).map(
            lambda extra: {**extra, **d}
        )
    ),
)
model_table = st.one_of(
    values,
    st.builds(
        lambda base, src, post: {**base, "source": src, "postprocess": post},
        _table(MODEL_KEYS),
        plugin_table,
        plugin_table,
    ),
)
documents = st.dictionaries(
    st.one_of(st.sampled_from([*config.SECTIONS, "models"]), st.text(max_size=8)),
    st.one_of(
        st.sampled_from(list(SECTION_KEYS)).flatmap(lambda s: _table(SECTION_KEYS[s])),
        st.dictionaries(st.text(max_size=10), model_table, max_size=2),
        values,
    ),
    max_size=3,
)


@settings(
    max_examples=examples(10_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=documents)
def test_any_document_is_a_config_or_a_config_error_with_paths(data: dict[str, Any]) -> None:
    try:
        cfg = config.parse(data, base_dir=Path("/nonexistent-edgetpud-base"))
    except ConfigError as exc:
        assert exc.issues, "a ConfigError without issues"
        for issue in exc.issues:
            assert issue.path, f"an issue without a key path: {issue}"
            assert issue.message.strip(), f"an issue without a message at {issue.path}"
        return
    assert isinstance(cfg, config.Config)
    assert set(cfg.models) <= set(data.get("models") or {})


# ---- whole files: nesting depth and sizes (issue 26) --------------------------------------


def _nest(depth: int, kind: str, leaf: str) -> str:
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    return "{a = " * depth + leaf + "}" * depth


_where = st.sampled_from(
    [
        "x = {v}\n",
        "[daemon]\nnode_id = {v}\n",
        "[devices]\nallow = {v}\n",
        "[models.m]\nmodel = {v}\n",
    ]
)
_nested = st.builds(
    lambda where, depth, kind, leaf: where.format(v=_nest(depth, kind, leaf)),
    _where,
    st.one_of(st.integers(0, 40), st.integers(300, 3000)),
    st.sampled_from(["array", "table"]),
    st.sampled_from(['"2-*"', "1", '""', "[]", "{}"]),
)
_sized = st.builds(
    lambda key, n, ch: f'[mqtt]\n{key} = "{ch * n}"\n',
    st.sampled_from(["client_id", "username", "host", "topic_prefix", "homeassistant_prefix"]),
    st.one_of(st.integers(0, 300), st.integers(60_000, 70_000)),
    st.sampled_from(["a", "é", "/", "\\u0000", "+"]),
)
_digits = st.builds(lambda n: f"[mqtt]\nport = {'9' * n}\n", st.integers(1, 6000))
_many_models = st.builds(
    lambda n: "".join(f'[models.m{i}]\nmodel = "m.tflite"\n' for i in range(n)),
    st.integers(250, 600),
)


@settings(
    max_examples=examples(1_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(text=st.one_of(_nested, _sized, _digits, _many_models))
def test_any_file_is_a_config_or_one_readable_error(text: str, tmp_path: Path) -> None:
    """Nesting 0-3,000 deep, strings of up to 70,000 bytes, 6,000-digit integers and
    hundreds of models: `config.load` returns a Config or raises ConfigError (with key
    paths) or ConfigUnreadableError (one line); never RecursionError, ValueError, or a
    message the size of the input."""
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3")
    path = tmp_path / "edgetpud.toml"
    path.write_text(text)
    try:
        cfg = config.load(path)
    except ConfigUnreadableError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 400 + len(str(path)), message[:500]
        return
    except ConfigError as exc:
        for issue in exc.issues:
            assert issue.path and issue.message.strip()
            assert len(issue.message) < 600, issue.message[:500]
        return
    assert isinstance(cfg, config.Config)
    assert len(cfg.models) <= config.MAX_MODELS
    assert len(cfg.mqtt.client_id.encode()) <= config.MQTT_STRING_BYTES
