"""Pipelined models over the real runtime: small segmented CPU models with exact outputs
(tests/support/runtime.py writes them), and Coral's SSD MobileNet v1 split in two on
simulated Edge TPUs (the fake libedgetpu)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from edgetpud.errors import ModelError
from edgetpud.pipeline import PipelineSession, open_pipeline, stage_devices
from edgetpud.runtime import open_session
from tests.support.fakelib import Accelerators, FakeLib, make_control
from tests.support.runtime import Op, Tensor, tflite_bytes


def _segments(tmp_path: Path) -> list[Path]:
    """Segment 0: x = a + b, y = x + a (outputs x, y). Segment 1 takes y, x (in the other
    order: inputs are matched by name) and gives out = x + y = 3a + 2b."""
    t = [Tensor(n, [1, 4], "float32") for n in ("a", "b", "x", "y")]
    seg0 = tflite_bytes(t, [Op([0, 1], [2]), Op([2, 0], [3])], [0, 1], [2, 3])
    u = [Tensor(n, [1, 4], "float32") for n in ("y", "x", "out")]
    seg1 = tflite_bytes(u, [Op([1, 0], [2])], [0, 1], [2])
    paths = [tmp_path / "m_segment_0_of_2.tflite", tmp_path / "m_segment_1_of_2.tflite"]
    for path, data in zip(paths, (seg0, seg1), strict=True):
        path.write_bytes(data)
    return paths


def test_segments_feed_each_other_by_tensor_name(tmp_path: Path) -> None:
    pipe = open_pipeline(
        _segments(tmp_path), ["cpu"], lambda p, d: open_session(p, d, cpu_threads=1)
    )
    try:
        a = np.array([[1, 2, 3, 4]], np.float32)
        b = np.array([[10, 20, 30, 40]], np.float32)
        (out,) = pipe.invoke([a, b])
        np.testing.assert_array_equal(out, 3 * a + 2 * b)
        assert [t.name for t in pipe.info.inputs] == ["a", "b"]
        assert [t.name for t in pipe.info.outputs] == ["out"]
        assert [s.invokes for s in pipe.stats()] == [1, 1]
    finally:
        pipe.close()


def test_many_callers_each_get_their_own_result(tmp_path: Path) -> None:
    pipe = open_pipeline(
        _segments(tmp_path), ["cpu"], lambda p, d: open_session(p, d, cpu_threads=1)
    )
    got: dict[int, float] = {}
    lock = threading.Lock()

    def caller(k: int) -> None:
        for i in range(25):
            v = float(k * 1000 + i)
            (out,) = pipe.invoke([np.full((1, 4), v, np.float32), np.zeros((1, 4), np.float32)])
            with lock:
                got[k * 1000 + i] = float(out[0, 0])

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    pipe.close()
    assert got == {n: 3.0 * n for n in got} and len(got) == 100


def test_segments_that_do_not_fit_together_are_refused_with_what_to_do(tmp_path: Path) -> None:
    seg0, seg1 = _segments(tmp_path)
    with pytest.raises(ModelError, match="segment 1 wants input tensor"):
        open_pipeline([seg1, seg0], ["cpu"], lambda p, d: open_session(p, d, cpu_threads=1))


SSD = [f"ssd_mobilenet_v1_coco_quant_postprocess_segment_{k}_of_2_edgetpu.tflite" for k in (0, 1)]


def test_ssd_segments_run_on_their_own_simulated_tpus(
    models_dir: Path,
    lib: FakeLib,
    bed: Accelerators,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_control(tmp_path, monkeypatch, mode="simulate", invoke_ms=1)
    bed.add_usb("2-1")
    bed.add_usb("2-2")
    pipe = open_pipeline(
        [models_dir / s for s in SSD],
        ["usb:2-1", "usb:2-2"],
        lambda p, d: open_session(p, d, library=str(lib.path)),
    )
    try:
        frame = np.zeros((1, 300, 300, 3), np.uint8)
        for _ in range(5):
            boxes, _classes, _scores, count = pipe.invoke([frame])
        assert boxes.shape == (1, 20, 4) and count.shape == (1,)
        assert lib.invokes("2-1") == 5 and lib.invokes("2-2") == 5
        assert [s.device for s in pipe.stats()] == ["usb:2-1", "usb:2-2"]
    finally:
        pipe.close()


def test_fewer_devices_than_segments_share_them_in_order() -> None:
    assert stage_devices(2, ["usb:2-1"]) == ["usb:2-1", "usb:2-1"]
    assert stage_devices(3, ["a", "b"]) == ["a", "a", "b"]
    assert stage_devices(2, ["a", "b", "c"]) == ["a", "b"]


@dataclasses.dataclass(frozen=True)
class _Info:
    inputs: tuple[object, ...] = ()
    outputs: tuple[object, ...] = ()


class _Segment:
    info = _Info()
    device = "cpu"

    def invoke(self, inputs: list[object]) -> list[object]:
        return []

    def close(self) -> None:
        pass


def test_a_closed_pipeline_says_so() -> None:
    pipe = PipelineSession([_Segment()])
    pipe.close()
    with pytest.raises(ModelError, match="closed"):
        pipe.invoke([])
