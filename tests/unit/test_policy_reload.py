"""Table tests for what a reload changes (edgetpud/policy/reload.py), from two configs."""

from __future__ import annotations

import copy
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

import pytest

from edgetpud.config import Config, parse
from edgetpud.policy.reload import ReloadPlan, plan_reload


def base(models: Path) -> dict[str, Any]:
    def model(name: str) -> dict[str, Any]:
        return {
            "model": str(models / f"{name}_edgetpu.tflite"),
            "cpu_model": str(models / f"{name}.tflite"),
            "postprocess": {"type": "classify"},
        }

    return {
        "daemon": {"node_id": "n1", "state_dir": "/tmp", "log_level": "info"},
        "mqtt": {"host": "127.0.0.1"},
        "models": {
            "a": model("mobilenet_v1_0.25_128_quant"),
            "b": {**model("mobilenet_v1_0.5_160_quant"), "performance": "std"},
        },
    }


def edit(data: dict[str, Any], path: str, value: Any) -> None:
    """Set `path` ("models.a.priority"); value None deletes it."""
    *parents, last = path.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    if value is None:
        del data[last]
    else:
        data[last] = value


# (case, edits {dotted path: new value, None = delete}, expected fields of the plan)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("the same config changes nothing", {}, {}),
    ("a new broker host relinks", {"mqtt.host": "broker.lan"}, {"relink": True}),
    ("a new node id relinks", {"daemon.node_id": "n2"}, {"relink": True}),
    ("joining a fleet relinks", {"fleet.group": "yard"}, {"relink": True}),
    ("a new decode budget relinks and restarts every model", {"daemon.max_decode_bytes": 2_000_000}, {"relink": True, "restarted": ("a", "b")}),
    ("a log level is applied", {"daemon.log_level": "debug"}, {"log_level": "debug"}),
    ("a model removed", {"models.b": None}, {"removed": ("b",)}),
    ("a model added", {"models.c": {"model": "{m}/mobilenet_v1_0.25_128_quant_edgetpu.tflite", "postprocess": {"type": "raw"}}}, {"added": ("c",)}),
    ("a changed model restarts alone", {"models.a.priority": 90}, {"restarted": ("a",)}),
    ("a new runtime restarts every model", {"runtime.cpu_threads": 1}, {"runtime_changed": True, "restarted": ("a", "b")}),
    ("a new clock restarts only the models that follow it", {"devices.performance": "max"}, {"devices_changed": True, "clock": "max", "restarted": ("a",)}),
    ("a model at max restarts and re-judges the ports for 900 mA", {"models.a.performance": "max"}, {"devices_changed": True, "clock": "max", "restarted": ("a",)}),
    ("device policy alone re-judges, restarts nothing", {"devices.quarantine_after": 7}, {"devices_changed": True}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "edits", "expected"), CASES, ids=[c[0] for c in CASES])
def test_plan_reload(
    case: str, edits: dict[str, Any], expected: dict[str, Any], models_dir: Path
) -> None:
    old_data = base(models_dir)
    new_data = copy.deepcopy(old_data)
    for path, value in edits.items():
        if isinstance(value, dict) and "model" in value:
            edit(new_data, path, {**value, "model": value["model"].format(m=models_dir)})
        else:
            edit(new_data, path, value)
    old: Config = parse(old_data)
    new: Config = parse(new_data)
    running = {name: m for name, m in old.models.items()}
    want = ReloadPlan(
        relink=False,
        log_level="",
        runtime_changed=False,
        devices_changed=False,
        clock="std",
        removed=(),
        added=(),
        restarted=(),
    )
    for key, value in expected.items():
        want = dataclass_replace(want, **{key: value})
    assert plan_reload(old, new, running) == want
    assert want.changes_nothing is (not expected)


def test_a_pinned_log_level_is_left_alone(models_dir: Path) -> None:
    old_data = base(models_dir)
    new_data = copy.deepcopy(old_data)
    new_data["daemon"]["log_level"] = "debug"
    plan = plan_reload(parse(old_data), parse(new_data), {}, log_level_pinned=True)
    assert plan.log_level == ""


def test_a_model_is_compared_with_what_it_runs_not_with_the_old_file(models_dir: Path) -> None:
    """A model restarted with an edited config, then edited back, restarts again."""
    data = base(models_dir)
    cfg = parse(data)
    edited = copy.deepcopy(data)
    edited["models"]["a"]["priority"] = 90
    running = {"a": parse(edited).models["a"], "b": cfg.models["b"]}
    assert plan_reload(cfg, cfg, running).restarted == ("a",)
