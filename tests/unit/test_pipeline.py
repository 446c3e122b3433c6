"""The pipeline's plumbing with stand-in segments (no TFLite runtime): order, errors,
several interpreters per stage. Real models: tests/integration/test_pipeline.py."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import pytest

from edgetpud.errors import ModelError
from edgetpud.pipeline import PipelineSession


@dataclass(frozen=True)
class T:
    name: str


@dataclass(frozen=True)
class Info:
    inputs: tuple[T, ...]
    outputs: tuple[T, ...]


class Segment:
    """Adds `add` to its input after a random pause; fails on the value `fail_on`."""

    def __init__(self, name_in: str, name_out: str, add: int, fail_on: int = -1) -> None:
        self.info = Info((T(name_in),), (T(name_out),))
        self.device = f"dev-{name_out}"
        self.add, self.fail_on = add, fail_on
        self.closed = False

    def invoke(self, inputs: list[int]) -> list[int]:
        time.sleep(random.uniform(0, 0.002))
        if inputs[0] == self.fail_on:
            raise ModelError(f"segment failed on {inputs[0]}")
        return [inputs[0] + self.add]

    def close(self) -> None:
        self.closed = True


class Recorder(Segment):
    """A segment that notes the order in which values reach it."""

    def __init__(self, name_in: str, name_out: str, add: int) -> None:
        super().__init__(name_in, name_out, add)
        self.seen: list[int] = []

    def invoke(self, inputs: list[int]) -> list[int]:
        self.seen.append(inputs[0])
        return super().invoke(inputs)


def test_requests_keep_their_order_through_a_stage_with_several_interpreters() -> None:
    first = Recorder("in", "a", 0)  # one interpreter: it sees the requests in arrival order
    middle = [Segment("a", "b", 1000) for _ in range(3)]  # they finish in random order
    last = Recorder("b", "out", 1)
    pipe = PipelineSession([first, middle, last])
    answers: dict[int, int] = {}

    def call(v: int) -> None:
        answers[v] = pipe.invoke([v])[0]

    threads = [threading.Thread(target=call, args=(v,)) for v in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == {v: v + 1001 for v in range(60)}
    assert [v - 1000 for v in last.seen] == first.seen  # the middle stage kept their order
    assert [s.invokes for s in pipe.stats()] == [60, 60, 60]
    pipe.close()
    assert all(s.closed for s in [first, *middle, last])


def test_a_failing_segment_fails_that_request_only() -> None:
    pipe = PipelineSession([Segment("in", "mid", 10, fail_on=3), Segment("mid", "out", 1)])
    results: dict[int, object] = {}

    def call(v: int) -> None:
        try:
            results[v] = pipe.invoke([v])[0]
        except ModelError as exc:
            results[v] = str(exc)

    threads = [threading.Thread(target=call, args=(v,)) for v in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results[3] == "segment failed on 3"
    assert {v: r for v, r in results.items() if v != 3} == {v: v + 11 for v in range(8) if v != 3}
    pipe.close()


def test_closed_pipeline_refuses_requests() -> None:
    pipe = PipelineSession([Segment("in", "out", 1)])
    pipe.close()
    with pytest.raises(ModelError, match="closed"):
        pipe.invoke([1])


def test_lanes_share_one_pipeline_and_a_lost_host_makes_them_build_a_new_one() -> None:
    from edgetpud.hosts.session import HostLost
    from edgetpud.pipeline import SharedPipeline

    built: list[PipelineSession] = []
    lose = threading.Event()

    class Fragile(Segment):
        def invoke(self, inputs: list[int]) -> list[int]:
            if lose.is_set():
                raise HostLost("usb:2-1", 1, "the device host died", sent=True)
            return super().invoke(inputs)

    def make() -> PipelineSession:
        built.append(PipelineSession([Fragile("in", "out", 1)]))
        return built[-1]

    shared = SharedPipeline(make)
    lanes = [shared.open() for _ in range(3)]
    assert len(built) == 1 and lanes[0].invoke([1]) == [2]
    lose.set()
    with pytest.raises(HostLost):
        lanes[0].invoke([1])
    lose.clear()
    lanes[0].close()  # the lane reopens, as a worker's lane does after HostLost
    lanes[0] = shared.open()
    assert len(built) == 2 and lanes[0].invoke([5]) == [6]
    for lane in lanes[1:]:
        lane.close()
    assert built[0].sessions[0].closed
    lanes[0].close()
    assert built[1].sessions[0].closed
