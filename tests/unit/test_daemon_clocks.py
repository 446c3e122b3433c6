"""The clock a device's delegate opens with belongs to the device: "max" when any model
the plan puts there wants it (libedgetpu gives a second open of a device the first
one's context, whatever its options)."""

from __future__ import annotations

from pathlib import Path

from edgetpud.config import Config, DevicesConfig, ModelConfig
from edgetpud.daemon.models import Models
from edgetpud.daemon.state import ModelRuntime
from edgetpud.placement import Placement, Plan
from edgetpud.workers import ModelQueue


def _models(cfg: Config) -> Models:
    models = Models(cfg, runtime=None, on_report=lambda r: None, intake=None)  # type: ignore[arg-type]
    for name, mcfg in cfg.models.items():
        models.by_name[name] = ModelRuntime(name, mcfg, ModelQueue(name, 4))
    return models


def test_a_device_runs_at_max_when_any_of_its_models_wants_it() -> None:
    m = Path("m_edgetpu.tflite")
    cfg = Config(
        devices=DevicesConfig(performance="std"),
        models={
            "fast": ModelConfig(model=m, performance="max"),
            "slow": ModelConfig(model=m),
            "alone": ModelConfig(model=m),
            "pipe": ModelConfig(model=m, performance="max"),
        },
    )
    plan = Plan(
        {
            "fast": Placement("fast", ("usb:2-1",), "shared", ""),
            "slow": Placement("slow", ("usb:2-1",), "shared", ""),
            "alone": Placement("alone", ("usb:2-2",), "dedicated", ""),
            "pipe": Placement("pipe", ("usb:2-3", "usb:2-4"), "dedicated", ""),
        }
    )
    clocks = _models(cfg)._clocks(plan)
    assert clocks["usb:2-1"] == "max"  # slow shares it with fast: it opens at max too
    assert clocks["usb:2-2"] == "std"
    assert clocks["usb:2-3"] == clocks["usb:2-4"] == "max"
