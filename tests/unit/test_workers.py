"""ModelQueue overflow policies and Worker lifecycle, without the TFLite runtime.

Sessions here are scripted stand-ins (tests/support/workers.py): the pure unit
suite runs in the Debian package build, where no runtime exists. The same
behaviours through the real runtime and the fake Edge TPU library are in
tests/integration/test_workers_runtime.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from edgetpud.errors import ModelError, RequestError
from edgetpud.messages import Request
from edgetpud.runtime import InvokeError
from edgetpud.workers import ModelQueue, Worker
from tests.support.polling import wait_for
from tests.support.workers import Collector, ScriptedSession, array_pre, first_item, lanes_alive


def req(payload: Any = 1, **kw: Any) -> Request:
    return Request(model="m", payload=payload, kind="array", **kw)


def make_worker(
    queue: ModelQueue,
    sink: Collector,
    session: ScriptedSession | None = None,
    *,
    device: str = "usb:0",
    stall_timeout: float = 5.0,
    open_error: Exception | None = None,
    pre: Any = array_pre,
    post: Any = first_item,
    opener: Callable[[], ScriptedSession] | None = None,
    interpreters: int = 1,
) -> Worker:
    def open_session() -> ScriptedSession:
        if open_error is not None:
            raise open_error
        return session or ScriptedSession(device)

    return Worker(
        "m",
        device,
        queue,
        opener or open_session,
        pre,
        post,
        sink.on_result,
        sink.on_report,
        stall_timeout=stall_timeout,
        interpreters=interpreters,
    )


def serve(q: ModelQueue, sink: Collector, count: int) -> list[Request]:
    """Put `count` requests in the queue and wait until every one has a result."""
    sent = [req(i) for i in range(count)]
    for r in sent:
        q.put(r)
    wait_for(lambda: len(sink.results) == count, what=f"{count} results")
    return sent


# -- ModelQueue -------------------------------------------------------------------------------


def test_queue_is_fifo_and_get_times_out_empty() -> None:
    q = ModelQueue("m", 10, "block")
    a, b = req(), req()
    assert q.put(a) and q.put(b)
    assert q.depth == 2
    assert q.get(1.0) is a
    assert q.get(1.0) is b
    assert q.get(0.01) is None


def test_block_refuses_when_full_until_room_is_made() -> None:
    q = ModelQueue("m", 2, "block")
    assert q.put(req()) and q.put(req())
    assert q.put(req(), timeout=0.05) is False
    assert q.depth == 2 and q.dropped == 0

    late = req()
    results: list[bool] = []
    putter = threading.Thread(target=lambda: results.append(q.put(late, timeout=30)))
    putter.start()
    q.get(1.0)
    putter.join(30)
    assert results == [True]
    assert q.drain()[-1] is late


def test_drop_oldest_keeps_the_newest_and_counts_drops() -> None:
    q = ModelQueue("m", 3, "drop_oldest")
    sent = [req(i) for i in range(5)]
    for r in sent:
        assert q.put(r)
    assert [r.payload for r in q.drain()] == [2, 3, 4]
    assert q.dropped == 2


def test_latest_keeps_only_the_newest_request() -> None:
    q = ModelQueue("m", 8, "latest")
    for i in range(4):
        assert q.put(req(i))
    assert q.depth == 1
    assert q.dropped == 3
    got = q.get(1.0)
    assert got is not None and got.payload == 3


def test_requeued_requests_go_first_ignore_size_and_are_never_dropped() -> None:
    q = ModelQueue("m", 1, "latest")
    q.put(req("new"))
    back = [req("back1"), req("back2")]
    for r in back:
        q.requeue(r)
    q.put(req("newer"))  # drops "new", never the requeued ones
    assert [r.payload for r in q.drain()] == ["back2", "back1", "newer"]
    assert q.dropped == 1


def test_set_limits_changes_policy_and_rejects_nonsense() -> None:
    q = ModelQueue("m", 1, "block")
    q.put(req(0))
    q.set_limits(1, "drop_oldest")
    assert q.put(req(1), timeout=0)
    assert [r.payload for r in q.drain()] == [1]
    with pytest.raises(ValueError, match="overflow policy"):
        q.set_limits(1, "newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        q.set_limits(0, "block")


# -- Worker -------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpreters", [1, 2])
def test_worker_answers_each_request_with_a_timing_breakdown(interpreters: int) -> None:
    q = ModelQueue("m", 100, "block")
    sink = Collector()
    w = make_worker(q, sink, interpreters=interpreters)
    assert w.name == "worker:m@usb:0"
    w.start()
    sent = serve(q, sink, 20)
    for r in sent:
        result = sink.by_id(r.id)
        assert result.ok and result.output == r.payload + 1
        assert result.device == "usb:0"
        assert result.timing is not None and result.timing.queue_ms >= 0
    stats = w.stats()
    assert stats.processed == 20 and stats.errors == 0 and not stats.in_flight
    assert stats.p50_ms <= stats.p99_ms
    assert stats.heartbeat > 0
    assert w.stop(time.monotonic() + 30) == []
    wait_for(lambda: not lanes_alive(), what="worker thread to end")
    assert sink.kinds() == ["opened", "stopped"]


def test_invoke_error_answers_the_request_and_the_worker_carries_on() -> None:
    q = ModelQueue("m", 100, "block")
    sink = Collector()
    w = make_worker(q, sink)
    w.start()
    bad1, bad2, good = req("error"), req("error"), req(41)
    for r in (bad1, bad2, good):
        q.put(r)
    wait_for(lambda: len(sink.results) == 3, what="3 results")
    assert "failed to invoke" in sink.by_id(bad1.id).error
    assert "usb:0" in sink.by_id(bad1.id).error
    assert sink.by_id(good.id).output == 42
    wait_for(lambda: "recovered" in sink.kinds(), what="reports (from the invoke thread)")
    errors = [r for r in sink.reports if r.kind == "invoke_error"]
    assert [r.consecutive_errors for r in errors] == [1, 2]
    assert isinstance(errors[0].exc, InvokeError)
    assert "recovered" in sink.kinds()
    assert w.stats().consecutive_errors == 0 and w.stats().errors == 2
    w.stop(time.monotonic() + 30)


def test_invoke_errors_of_several_interpreters_are_counted_in_order() -> None:
    q = ModelQueue("m", 100, "block")
    sink = Collector()
    w = make_worker(q, sink, interpreters=4)
    w.start()
    bad = [req("error") for _ in range(8)]
    for r in bad:
        q.put(r)
    wait_for(lambda: len(sink.results) == len(bad), what="every failed request answered")
    wait_for(lambda: sink.kinds().count("invoke_error") == len(bad), what="every report")
    errors = [r for r in sink.reports if r.kind == "invoke_error"]
    # the service quarantines on the report that reaches quarantine_after: it must see 1, 2, 3…
    assert [r.consecutive_errors for r in errors] == list(range(1, len(bad) + 1))
    assert all(sink.ids()[r.id] == 1 for r in bad)
    w.stop(time.monotonic() + 30)


def test_bad_request_is_answered_and_is_not_a_device_fault() -> None:
    def picky(request: Request, info: Any) -> list[Any]:
        if request.payload == "garbage":
            raise RequestError("cannot decode the image; send JPEG, PNG or BMP")
        return array_pre(request, info)

    q = ModelQueue("m", 100, "block")
    sink = Collector()
    w = make_worker(q, sink, pre=picky)
    w.start()
    bad, misfit, good = req("garbage"), req("misfit"), req(1)
    for r in (bad, misfit, good):
        q.put(r)
    wait_for(lambda: len(sink.results) == 3, what="3 results")
    assert "cannot decode" in sink.by_id(bad.id).error
    assert sink.by_id(misfit.id).error.startswith("bad request: ")
    assert sink.by_id(good.id).ok
    assert "invoke_error" not in sink.kinds()
    assert w.stats().consecutive_errors == 0
    w.stop(time.monotonic() + 30)


def test_model_error_at_open_is_reported_and_takes_no_work() -> None:
    q = ModelQueue("m", 100, "block")
    q.put(req(1))
    sink = Collector()
    w = make_worker(q, sink, open_error=ModelError("m.tflite is not a TFLite model"))
    w.start()
    wait_for(lambda: not w.alive, what="worker to give up")
    assert sink.kinds() == ["open_failed"]
    assert "not a TFLite model" in sink.reports[0].error
    assert w.state == "failed"
    assert q.depth == 1  # the request waits for a worker that can serve it
    assert w.stop(time.monotonic() + 1) == []


# -- what users read: the project's own errors as they are, no class names ------------------


def test_errors_users_read_carry_no_class_names() -> None:
    def picky(request: Request, info: Any) -> list[Any]:
        if request.payload == "garbage":
            raise RequestError("the request is not a readable image; send a JPEG")
        return array_pre(request, info)

    def strict(outputs: Any, request: Request, info: Any) -> Any:
        if request.payload == 2:
            raise RequestError("the model gave no boxes; send a larger image")
        if request.payload == 3:
            raise KeyError("boxes")  # a plugin's bug: its class name helps the report
        return first_item(outputs, request, info)

    q = ModelQueue("m", 100, "block")
    sink = Collector()
    w = make_worker(q, sink, pre=picky, post=strict)
    w.start()
    garbage, misfit, empty, buggy, broken = (
        req("garbage"),
        req("misfit"),
        req(2),
        req(3),
        req("error"),
    )
    for r in (garbage, misfit, empty, buggy, broken):
        q.put(r)
    wait_for(lambda: len(sink.results) == 5, what="5 results")
    assert sink.by_id(garbage.id).error == (
        "bad request: the request is not a readable image; send a JPEG"
    )
    assert sink.by_id(misfit.id).error.startswith("bad request: input 'x' of fake.tflite wants")
    assert sink.by_id(empty.id).error == (
        "postprocess failed: the model gave no boxes; send a larger image"
    )
    assert sink.by_id(buggy.id).error == "postprocess failed: KeyError: 'boxes'"
    invoke_error = sink.by_id(broken.id).error
    assert invoke_error == (
        "invoke failed on usb:0: inference of fake.tflite failed: Node number 0 failed to invoke"
    )
    wait_for(lambda: "invoke_error" in sink.kinds(), what="the invoke_error report")
    [report] = [r for r in sink.reports if r.kind == "invoke_error"]
    assert report.error == invoke_error  # what health, events and quarantine reasons show
    w.stop(time.monotonic() + 30)


def test_open_failure_report_is_the_message_itself() -> None:
    q = ModelQueue("m", 100, "block")
    sink = Collector()
    message = "model_invoking_error.tflite cannot run on the CPU; give its CPU build"
    w = make_worker(q, sink, open_error=ModelError(message))
    w.start()
    wait_for(lambda: not w.alive, what="worker to give up")
    assert sink.reports[0].kind == "open_failed"
    assert sink.reports[0].error == message


def test_an_unexpected_open_failure_keeps_its_class_name_for_the_bug_report() -> None:
    q = ModelQueue("m", 100, "block")
    sink = Collector()
    w = make_worker(q, sink, open_error=ZeroDivisionError("division by zero"))
    w.start()
    wait_for(lambda: not w.alive, what="worker to give up")
    assert sink.reports[0].error == "ZeroDivisionError: division by zero"


def test_stop_lets_the_in_flight_requests_finish_and_leaves_the_rest_queued() -> None:
    q = ModelQueue("m", 100, "block")
    session = ScriptedSession()
    sink = Collector()
    w = make_worker(q, sink, session)
    w.start()
    slow = req("hang")
    q.put(slow)
    assert session.hanging.wait(30)
    waiting = [req(i) for i in range(5)]
    for r in waiting:
        q.put(r)
    threading.Timer(0.2, session.release.set).start()
    assert w.stop(time.monotonic() + 30) == []
    assert sink.ids()[slow.id] == 1  # drained: answered, not dropped
    # One more was already prepared while `slow` ran and may be answered too; the rest wait.
    queued = q.drain()
    assert len(queued) >= len(waiting) - 1
    answered = sink.ids()
    assert all(answered[r.id] + queued.count(r) == 1 for r in waiting)
    assert session.closed.is_set()
    assert sink.kinds()[-1] == "stopped"


@pytest.mark.parametrize("interpreters", [1, 2])
def test_stop_past_the_deadline_hands_the_request_back_once(interpreters: int) -> None:
    q = ModelQueue("m", 100, "block")
    session = ScriptedSession()
    sink = Collector()
    w = make_worker(q, sink, session, interpreters=interpreters)
    w.start()
    stuck = req("hang")
    q.put(stuck)
    assert session.hanging.wait(30)
    assert w.stop(time.monotonic() + 0.05) == [stuck]
    session.release.set()
    wait_for(lambda: not lanes_alive(), what="abandoned thread to end")
    assert sink.ids()[stuck.id] == 0  # its late result was discarded, not a duplicate
    assert session.closed.is_set()


@pytest.mark.parametrize("interpreters", [1, 2])
def test_hung_worker_loses_no_request_and_answers_none_twice(interpreters: int) -> None:
    q = ModelQueue("m", 100, "block")
    hung_session = ScriptedSession("usb:0")
    sink = Collector()
    hung = make_worker(
        q, sink, hung_session, device="usb:0", stall_timeout=0.2, interpreters=interpreters
    )
    hung.start()
    victim = req("hang")
    q.put(victim)
    assert hung_session.hanging.wait(30)
    rest = [req(i) for i in range(10)]
    for r in rest:
        q.put(r)

    assert not hung.check_stall(time.monotonic())  # not yet past stall_timeout
    wait_for(lambda: hung.check_stall(time.monotonic()), what="stall detection")
    assert not hung.check_stall(time.monotonic())  # only once
    assert hung.hung and hung.stats().state == "stalled"
    stalled = [r for r in sink.reports if r.kind == "stalled"]
    assert len(stalled) == 1 and "usb:0" in stalled[0].error

    # A second worker on a healthy device picks up everything, the victim first.
    good_session = ScriptedSession("usb:1", healthy=True)
    good = make_worker(q, sink, good_session, device="usb:1")
    good.start()
    wait_for(lambda: len(sink.results) == 11, what="every request answered")
    redo = sink.by_id(victim.id)
    assert redo.device == "usb:1" and redo.request.attempts == 1

    # The hung invoke finally returns: its result is discarded.
    hung_session.release.set()
    assert hung.stop(time.monotonic() + 30) == []
    good.stop(time.monotonic() + 30)
    wait_for(lambda: not lanes_alive(), what="threads back to baseline")
    ids = sink.ids()
    assert all(ids[r.id] == 1 for r in [victim, *rest])
    assert sum(ids.values()) == 11


def test_a_request_that_hangs_every_device_is_answered_in_the_end() -> None:
    q = ModelQueue("m", 100, "block")
    sink = Collector()
    sessions = []
    poison = req("hang")
    q.put(poison)
    workers = []
    for n in range(3):
        session = ScriptedSession(f"usb:{n}")
        sessions.append(session)
        w = make_worker(q, sink, session, device=f"usb:{n}", stall_timeout=0.1)
        workers.append(w)
        w.start()
        assert session.hanging.wait(30)
        wait_for(lambda: workers[-1].check_stall(time.monotonic()), what="stall detection")
    assert sink.ids()[poison.id] == 1
    assert "3 attempts" in sink.by_id(poison.id).error
    for session in sessions:
        session.release.set()
    for w in workers:
        w.stop(time.monotonic() + 30)
    # the abandoned lanes end (and log so) here, not during a later test
    wait_for(lambda: not lanes_alive(), what="abandoned threads to end")


@pytest.mark.parametrize("interpreters", [1, 2])
def test_slow_postprocessing_holds_the_device_back_instead_of_piling_up(
    interpreters: int,
) -> None:
    q = ModelQueue("m", 100, "block")
    session = ScriptedSession()
    sink = Collector()
    gate = threading.Event()

    def slow_post(outputs: list[Any], request: Request, info: Any) -> Any:
        gate.wait(60)
        return first_item(outputs, request, info)

    w = make_worker(q, sink, session, post=slow_post, stall_timeout=60, interpreters=interpreters)
    w.start()
    sent = [req(i) for i in range(20)]
    for r in sent:
        q.put(r)
    # Each interpreter's thread holds the one request it is postprocessing, no more.
    wait_for(lambda: session.invokes == interpreters, what="every interpreter to invoke once")
    time.sleep(0.2)
    assert session.invokes == interpreters
    assert q.depth == len(sent) - interpreters
    gate.set()
    wait_for(lambda: len(sink.results) == len(sent), what="every request answered")
    assert all(sink.ids()[r.id] == 1 for r in sent)
    w.stop(time.monotonic() + 30)


def test_two_interpreters_take_turns_on_one_device() -> None:
    q = ModelQueue("m", 1000, "block")
    sink = Collector()
    opened: list[str] = []
    sessions: list[ScriptedSession] = []

    def open_session() -> ScriptedSession:
        opened.append(threading.current_thread().name)
        sessions.append(ScriptedSession("usb:0", invoke_s=0.002))
        return sessions[-1]

    w = make_worker(q, sink, opener=open_session, stall_timeout=60, interpreters=2)
    w.start()
    sent = serve(q, sink, 200)
    assert sorted(opened) == ["worker:m@usb:0", "worker:m@usb:0/2"]
    assert all(s.invokes > 0 for s in sessions)  # both interpreters served
    assert sum(s.invokes for s in sessions) == len(sent)
    assert all(sink.ids()[r.id] == 1 for r in sent)
    assert all(sink.by_id(r.id).output == r.payload + 1 for r in sent)
    assert w.stats().processed == len(sent)
    assert w.stop(time.monotonic() + 30) == []
    assert all(s.closed.is_set() for s in sessions)
    assert sink.kinds() == ["opened", "stopped"]


def test_a_second_interpreter_that_cannot_open_leaves_the_first_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = ModelQueue("m", 100, "block")
    sink = Collector()
    opens = 0

    def open_session() -> ScriptedSession:
        nonlocal opens
        opens += 1
        if opens > 1:
            raise ModelError("out of Edge TPU memory for a second copy of m.tflite")
        return ScriptedSession("usb:0")

    w = make_worker(q, sink, opener=open_session, stall_timeout=60, interpreters=2)
    w.start()
    serve(q, sink, 10)
    assert "interpreter 2 of 2 could not open" in caplog.text
    assert "out of Edge TPU memory" in caplog.text
    assert w.state == "running"
    assert w.stop(time.monotonic() + 30) == []
    assert sink.kinds() == ["opened", "stopped"]


def test_put_over_limit_keeps_order_and_holds_back_ordinary_puts() -> None:
    q = ModelQueue("m", 2, "block")
    first, second, kept = req(1), req(2), req(3)
    assert q.put(first, timeout=0) and q.put(second, timeout=0)
    q.put_over_limit(kept)  # a fleet request the broker already handed over
    assert q.depth == 3
    assert not q.put(req(4), timeout=0)  # still full for ordinary requests
    assert [q.get(0.1), q.get(0.1), q.get(0.1)] == [first, second, kept]


def test_a_request_goes_to_an_idle_device_before_queueing_behind_a_busy_one() -> None:
    """Two replicas with 4 lanes each: while one device runs a request, the next goes to
    the other device, not to a second lane of the busy one (where it would wait for the
    first invoke to end). Five rounds, so that a lane picked at random would miss."""
    q = ModelQueue("m", 8)
    sink = Collector()
    sessions = [ScriptedSession("usb:0"), ScriptedSession("usb:1")]
    workers = [
        make_worker(q, sink, device=s.device, opener=lambda s=s: s, interpreters=4)
        for s in sessions
    ]
    for w in workers:
        w.start()
    wait_for(lambda: all(w.state == "running" for w in workers), what="both running")
    time.sleep(0.2)  # every lane waiting for work
    for round_ in range(5):
        q.put(req("hang"))
        wait_for(lambda: any(s.hanging.is_set() for s in sessions), what="one device busy")
        q.put(req("hang"))
        wait_for(
            lambda: all(s.hanging.is_set() for s in sessions),
            timeout=5,
            what=f"round {round_}: the second request on the idle device",
        )
        for s in sessions:
            s.release.set()
        wait_for(lambda r=round_: len(sink.results) == 2 * (r + 1), what="both answered")
        for s in sessions:
            s.hanging.clear()
            s.release.clear()
    for w in workers:
        w.stop(time.monotonic() + 5)
