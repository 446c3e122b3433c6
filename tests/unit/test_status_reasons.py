"""`edgetpud status` says why a model is not running, and a refused reload on one line."""

from __future__ import annotations

from typing import Any

from edgetpud.commands.status import REASON_WIDTH, reload_error, render
from edgetpud.errors import ConfigError, ConfigIssue

RUNNING = {"state": "running", "tier": "dedicated", "devices": ["usb:2-1"], "rate": 41.5,
           "reason": "dedicated USB accelerator usb:2-1 (USB 3): priority 5; the best kind"}  # fmt: skip


def health(models: dict[str, Any], **daemon: Any) -> dict[str, Any]:
    return {
        "time": 1000.0,
        "daemon": {"version": "0.1.0", "uptime_s": 30, "config_generation": 1, **daemon},
        "models": models,
    }


def table(out: str, first: str) -> list[str]:
    """The lines of the table whose header starts with `first`, header included."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def test_disabled_and_waiting_models_say_why() -> None:
    models = {
        "birds": RUNNING,
        "cats": {"state": "disabled", "tier": "disabled",
                 "reason": "model file /m/cats.tflite does not exist: check the path"},
        "owls": {"state": "waiting", "tier": "waiting",
                 "reason": "waiting: no usable USB Edge TPU; set cpu_model"},
    }  # fmt: skip
    out = render({"box1": health(models)}, {"box1": "online"}, now=1001.0)
    lines = table(out, "NODE  MODEL")
    assert lines[0].split()[-1] == "REASON"
    column = lines[0].index("REASON")
    rows = {line.split()[1]: line for line in lines[1:]}
    assert rows["cats"][column:] == "model file /m/cats.tflite does not exist: check the path"
    assert rows["owls"][column:] == "no usable USB Edge TPU; set cpu_model"  # STATE says waiting
    assert len(rows["birds"]) < column  # running on its Edge TPU: PLACEMENT and TIER say it
    assert "41.5/s" in rows["birds"] and "dedicated" in rows["birds"]
    assert "is cut" not in out


def test_a_model_on_the_cpu_says_why() -> None:
    models = {"birds": {**RUNNING, "tier": "cpu", "devices": ["cpu"],
                        "reason": "pinned to usb:2-1, which is gone; running its cpu_model on the CPU"}}  # fmt: skip
    out = render({"box1": health(models)}, {"box1": "online"}, now=1001.0)
    assert out.splitlines()[-1].endswith("running its cpu_model on the CPU")


def test_a_long_or_multiline_reason_keeps_the_table_whole() -> None:
    long = "no usable PCIe Edge TPU (2 rejected: " + "; ".join(["x" * 30] * 4) + ")"
    models = {
        "a": {"state": "disabled", "reason": "first line\nTraceback (most recent call last):"},
        "b": {"state": "waiting", "reason": "waiting: " + long},
        "c": {"state": "disabled", "reason": None},
        "d": {"state": "disabled"},
    }
    out = render({"box1": health(models)}, {"box1": "online"}, now=1001.0)
    lines = table(out, "NODE  MODEL")
    assert len(lines) == 1 + len(models) + 1  # one line a model, then the note
    assert all(line.startswith("box1  ") for line in lines[1:-1])  # nothing spills over
    column = lines[0].index("REASON")
    rows = {line.split()[1]: line for line in lines[1:-1]}
    assert rows["a"][column:] == "first line"
    assert rows["b"][column:] == long[: REASON_WIDTH - 1] + "…"
    assert len(rows["b"][column:]) == REASON_WIDTH
    assert len(rows["c"]) < column and len(rows["d"]) < column
    note = lines[-1]
    assert note.startswith("(a REASON ending in … is cut")
    assert "journalctl -u edgetpud" in note


def test_a_refused_reload_shows_on_one_line_with_what_to_do() -> None:
    error = ConfigError(
        [
            ConfigIssue("mqtt.hots", 'unknown key (did you mean "host"?)'),
            ConfigIssue("models.birds.postprocess.top_k", 'must be an integer, got "three"'),
        ],
        "/etc/edgetpud/edgetpud.toml",
    )
    nodes = {"box1": health({}, last_reload_error=str(error))}
    out = render(nodes, {"box1": "online"}, now=1001.0)
    assert len(out.splitlines()) == 2  # header and one row
    assert out.splitlines()[1].endswith(
        '2 problems, first: mqtt.hots: unknown key (did you mean "host"?); '
        "run edgetpud check-config /etc/edgetpud/edgetpud.toml"
    )
    assert "LAST RELOAD ERROR" in out


def test_reload_error_forms() -> None:
    one = str(ConfigError([ConfigIssue("mqtt.port", "must be 1 to 65535")], "/e.toml"))
    assert (
        reload_error(one)
        == "1 problem: mqtt.port: must be 1 to 65535; run edgetpud check-config /e.toml"
    )
    assert reload_error(one, "/etc/x.toml").endswith("run edgetpud check-config /etc/x.toml")
    nameless = str(ConfigError([ConfigIssue("a", "b"), ConfigIssue("c", "d")]))
    assert reload_error(nameless) == "2 problems, first: a: b; run edgetpud check-config"
    unreadable = "/e.toml: not valid TOML: Invalid value (at line 2, column 8); fix the TOML syntax"
    assert reload_error(unreadable) == unreadable  # one line already: shown as it is
    assert reload_error("first\n  second") == "first; second"
    assert reload_error(None) == "" and reload_error("") == ""
