"""A `busy` refusal says when to retry, from how fast the model's queue drains.

2,000 QoS 1 requests in a burst fill a model's queue; the refused ones were told
"retry later" and retried at once. The reply now carries `retry_after_ms`: the time
the workers lately took to take half of what waits (docs/mqtt.md, "Bursts").
"""

from __future__ import annotations

import time

from edgetpud import payloads
from edgetpud.daemon.intake import Entry, Intake
from edgetpud.messages import Request
from edgetpud.policy.admission import Door
from edgetpud.workers import ModelQueue


def req(i: int) -> Request:
    return Request(model="m", payload=b"x", kind="tensor", id=str(i))


def test_a_busy_refusal_carries_the_queues_drain_time() -> None:
    queue = ModelQueue("m", 8)
    for i in range(8):
        assert queue.put(req(i), timeout=0)
    for _ in range(6):  # a worker taking one request every 20 ms, none waited for
        time.sleep(0.02)
        assert queue.get(0) is not None
    for i in range(6):
        assert queue.put(req(100 + i), timeout=0)
    intake = Intake()
    intake.publish({"m": Entry(Door(queue_size=8), queue)})
    refusal = intake.submit(req(999))
    assert refusal is not None and refusal.startswith("busy: the queue of model m is full")
    reason, message = payloads.split_reason(refusal)
    body = payloads.error_payload("m", reason, message, node="box")
    assert reason == "busy"
    # half of the 8 waiting, at ~20 ms each: ~80 ms (sleep overshoots on a loaded box)
    assert 70 <= body["retry_after_ms"] <= 400, body
    assert f"retry in {body['retry_after_ms']} ms" in body["message"]


def test_before_any_measure_the_hint_is_100_ms_a_request() -> None:
    queue = ModelQueue("m", 4)
    for i in range(4):
        queue.put(req(i), timeout=0)
    assert queue.retry_after_ms() == 200


def test_other_refusals_carry_no_retry_hint() -> None:
    body = payloads.error_payload("m", "unknown_model", "model 'm' is not served", node="b")
    assert "retry_after_ms" not in body
