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
from edgetpud.errors import ConfigError
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
