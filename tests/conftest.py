"""Fixtures every test may use. Per-area fixtures live in tests/support/ modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

try:
    from hypothesis import settings
except ImportError:  # the paho 1.6 venv (make test-paho16) runs only the MQTT tests
    settings = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from tests.support.broker import Broker

ROOT = Path(__file__).resolve().parent.parent
SHARED_MODELS = Path(os.environ.get("EDGETPUD_SHARED_MODELS", ROOT.parent / "shared" / "models"))
FAKE_LIB = ROOT / "build" / "libfake_edgetpu.so"

# The emulated arm64/armhf package tests need root, binfmt_misc and minutes per
# architecture: `make test-arm` runs them (EDGETPUD_ARM=1); `make test` does not collect them.
collect_ignore = [] if os.environ.get("EDGETPUD_ARM") else ["arm"]

# Property tests and fuzzers draw the same examples on every run (seeded from each test),
# so a CI run cannot fail on an example no earlier run has seen: CI once failed on a
# placement case a random draw found. EDGETPUD_HYPOTHESIS_RANDOM=1 draws new examples
# (`make fuzz`); a failure found that way goes into the test as an @example.
if settings is not None:
    settings.register_profile(
        "edgetpud", derandomize=os.environ.get("EDGETPUD_HYPOTHESIS_RANDOM") != "1"
    )
    settings.load_profile("edgetpud")


@pytest.fixture
def models_dir() -> Path:
    """../shared/models: real Coral models, labels and images (CI always has it)."""
    if not (SHARED_MODELS / "mobilenet_v1_0.25_128_quant.tflite").is_file():
        pytest.skip(f"real Coral models not found at {SHARED_MODELS} (set EDGETPUD_SHARED_MODELS)")
    return SHARED_MODELS


@pytest.fixture
def fake_lib() -> Path:
    """The test Edge TPU runtime library built by `make test` from tests/native/fake_edgetpu.c."""
    if not FAKE_LIB.is_file():
        pytest.fail(
            f"{FAKE_LIB} is missing: run `make {FAKE_LIB.relative_to(ROOT)}` (make test builds it)"
        )
    return FAKE_LIB


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free port for this test (tests/support/broker.py), stopped after
    it. Its options come from the test's marker, e.g.
    `@pytest.mark.broker(max_queued_messages=0, persistence=True)`; kill()/start() inside
    the test are fine."""
    from tests.support.broker import Broker

    marker = request.node.get_closest_marker("broker")
    with Broker(tmp_path, **(marker.kwargs if marker else {})) as b:
        yield b


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every state path at tmp_path so no test touches /var/lib/edgetpud."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("STATE_DIRECTORY", str(state))  # systemd's; the default state_dir
    yield state
