"""The host pool reads a model file once, not once per lane per host restart.

Every lane of every host restart opens a session of the same model. Reading and parsing
the file each time (up to MBs, in the lane's own thread and so its own malloc arena) kept
the daemon's RSS 5-10 MB higher through host restarts (docs/reliability.md "Soak").
Real hosts on the CPU; the model reads are counted by wrapping the real inspect_model.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetpud import modelfile
from edgetpud.hosts import HostPool
from edgetpud.hosts import pool as pool_module
from edgetpud.modelfile import ModelInfo
from tests.support.polling import wait_for

SMALL = "mobilenet_v1_0.25_128_quant.tflite"  # input 128x128
LARGER = "mobilenet_v1_0.5_160_quant.tflite"  # input 160x160


@pytest.fixture
def pool() -> Iterator[HostPool]:
    hosts = HostPool()
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The model files inspected from now on (the real inspect_model does the work)."""
    seen: list[Path] = []
    real = modelfile.inspect_model

    def counting(path: Path) -> ModelInfo:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(modelfile, "inspect_model", counting)
    return seen


def test_lanes_reopening_after_a_host_death_do_not_read_the_model_again(
    models_dir: Path, tmp_path: Path, pool: HostPool, reads: list[Path]
) -> None:
    model = tmp_path / "model.tflite"
    shutil.copy(models_dir / SMALL, model)
    lanes = [pool.open_session("cpu", model, cpu_threads=1) for _ in range(4)]
    dead = lanes[0].pid
    os.kill(dead, signal.SIGKILL)
    wait_for(lambda: pool.snapshot()[0].deaths == 1, 10, "the host's death seen")
    for session in lanes:
        session.close()
    lanes = [pool.open_session("cpu", model, cpu_threads=1) for _ in range(4)]
    assert all(s.pid != dead for s in lanes)  # a new host
    assert reads == [model]
    # the admin replaces the file (a new inode) and reloads: the new model is read and used
    replacement = tmp_path / "replacement.tflite"
    shutil.copy(models_dir / LARGER, replacement)
    os.replace(replacement, model)
    again = pool.open_session("cpu", model, cpu_threads=1)
    assert reads == [model, model]
    assert tuple(again.info.inputs[0].shape) == (1, 160, 160, 3)
    for session in [*lanes, again]:
        session.close()


def test_the_parsed_models_kept_are_bounded(
    models_dir: Path,
    tmp_path: Path,
    pool: HostPool,
    reads: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "MAX_MODEL_INFOS", 2)
    paths = []
    for name in "abc":  # three models a series of reloads named in turn
        paths.append(tmp_path / f"{name}.tflite")
        shutil.copy(models_dir / SMALL, paths[-1])
    keep = pool.open_session("cpu", paths[0], cpu_threads=1)  # one host throughout
    for path in [*paths[1:], paths[2], paths[0]]:
        pool.open_session("cpu", path, cpu_threads=1).close()
    keep.close()
    # c was kept (one of the last two), a was dropped for c and read again
    assert reads == [*paths, paths[0]]
