"""Property-based fuzzing of the request desk: whatever MQTT 5 properties a request
carries, the daemon publishes only to the results topic or to a response topic the
rule allows (docs/mqtt.md, "Response topics"), and every request id it writes is
bounded. 2,000 requests, no broker: the desk's `send` is captured.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetpud.mqtt.outbox import Out
from edgetpud.mqtt.protocol import RequestDesk, Served
from edgetpud.mqtt.replies import MAX_REQUEST_ID_CHARS, ReplyRule
from edgetpud.mqtt.topics import Incoming, Topics
from edgetpud.topicfilter import filter_matches
from tests.support.examples import examples

TOPICS = Topics("edgetpud", "box1")
ALLOWED = ("replies/#", "clients/+/answers")
NBYTES = 12


class _Spec:
    nbytes = NBYTES
    shape = (1, 2, 2, 3)
    dtype = "uint8"


class _Info:
    inputs = (_Spec(),)


topics = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "#", "+", "replies/+", "$SYS/x", "homeassistant/x", "edgetpud/box1/health"]),
    st.builds(lambda p, t: p + t, st.sampled_from(["replies/", "clients/", "edgetpud/", "edgetpud/box1/", "homeassistant/", "$"]), st.text(max_size=20)),
    st.integers(1000, 1100).map(lambda n: "replies/" + "x" * n),
)  # fmt: skip
requests = st.builds(
    Incoming,
    topic=st.sampled_from(["edgetpud/box1/models/m/infer", "edgetpud/fleet/models/m/infer"]),
    payload=st.one_of(st.binary(max_size=20), st.just(b"\x07" * NBYTES)),
    response_topic=st.one_of(st.none(), topics),
    correlation=st.one_of(st.none(), st.binary(max_size=400), st.integers(60000, 65535).map(lambda n: bytes([n % 256]) * n)),
    content_type=st.one_of(st.none(), st.text(max_size=100), st.sampled_from(["application/octet-stream", "image/png"])),
    user_props=st.one_of(st.none(), st.lists(st.tuples(st.sampled_from(["request_id", "x"]), st.text(max_size=300)), max_size=3)),
)  # fmt: skip


@settings(
    max_examples=examples(2_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(msg=requests, queued=st.booleans())
def test_no_request_steers_a_publish_outside_the_rule(msg: Incoming, queued: bool) -> None:
    sent: list[Out] = []
    taken: list[Any] = []

    def on_request(request: Any) -> str | None:
        taken.append(request)
        return None if queued else "busy: the queue of model m is full (1 waiting); retry in 10 ms"

    desk = RequestDesk(
        TOPICS,
        send=lambda out, wait: sent.append(out),
        on_request=on_request,
        qos=1,
        max_request_bytes=1024,
        reply_props=lambda ctype, corr: (ctype, corr),
        rule=ReplyRule("edgetpud", "homeassistant", ALLOWED),
    )
    desk.served = Served.of({"m": _Info()}, None)
    desk.take(msg)
    for request in taken:  # a worker's result goes where the desk says
        desk.reply("m", request.reply_to, b"{}")
        assert len(request.id) <= MAX_REQUEST_ID_CHARS
    for out in sent:
        if out.topic == TOPICS.results("m"):
            continue
        assert out.topic == msg.response_topic
        assert any(filter_matches(f, out.topic) for f in ALLOWED), out.topic
        assert not out.topic.startswith(("edgetpud/", "homeassistant/", "$"))
        assert "+" not in out.topic and "#" not in out.topic
        assert out.props == ("application/json", msg.correlation)  # routes: whole correlation
    for out in sent:
        assert len(out.payload) < 2000, len(out.payload)
