"""Availability, broker outages, TLS and credentials, against a real mosquitto.

Runs with paho 2.x (.venv) and paho 1.6 (.venv-paho16, `make test-paho16`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.properties import VariableByteIntegers
from PIL import Image

from edgetpud.config import MqttConfig
from edgetpud.messages import Request, Result, Timing
from edgetpud.mqtt import MqttLink
from tests.support.broker import Broker, Subscriber
from tests.support.polling import wait_for

NODE = "box1"
STATUS = f"edgetpud/{NODE}/status"
RESULTS = f"edgetpud/{NODE}/models/m/results"
ROOT = Path(__file__).resolve().parents[2]


def refuse(request: Request) -> str | None:
    return "busy: not in this test"


def link_for(broker: Broker, **cfg: Any) -> MqttLink:
    mqtt_cfg = replace(MqttConfig(), host=broker.host, port=broker.port, **cfg)
    return MqttLink(mqtt_cfg, NODE, on_request=refuse)


def result(seq: int) -> Result:
    req = Request(model="m", payload=b"", kind="tensor", id=str(seq), source="test")
    return Result(req, "usb:2-1", {"seq": seq}, timing=Timing(0, 0, 1, 0))


def status_values(sub: Subscriber) -> list[tuple[str, bool]]:
    return [(m.payload.decode(), bool(m.retain)) for m in sub.on(STATUS)]


def retained_status(broker: Broker) -> str:
    with Subscriber(broker, [STATUS]) as sub:
        (msg,) = sub.wait_for(STATUS)
        assert msg.retain
        return str(msg.payload.decode())


def test_online_after_connect_and_offline_after_clean_stop(broker: Broker) -> None:
    changes: list[bool] = []
    mqtt_cfg = replace(MqttConfig(), host=broker.host, port=broker.port)
    link = MqttLink(mqtt_cfg, NODE, on_request=refuse, on_connection=changes.append)
    link.start()
    wait_for(lambda: link.stats().connected, what="connect")
    assert retained_status(broker) == "online"
    link.stop()
    link.stop()  # idempotent
    assert retained_status(broker) == "offline"
    assert changes[0] is True


def test_sigkill_of_the_daemon_leaves_offline_by_last_will(broker: Broker) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from dataclasses import replace
        from edgetpud.config import MqttConfig
        from edgetpud.mqtt import MqttLink
        cfg = replace(MqttConfig(), host="127.0.0.1", port=int(sys.argv[1]), keepalive=5)
        link = MqttLink(cfg, "{NODE}", on_request=lambda r: None)
        link.start()
        while not link.stats().connected:
            time.sleep(0.02)
        print("connected", flush=True)
        time.sleep(600)
        """
    )
    with Subscriber(broker, [STATUS]) as sub:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(broker.port)], stdout=subprocess.PIPE, env=env
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"connected"
            sub.wait_for(STATUS, count=1)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        sub.wait_for(STATUS, count=2)
        assert status_values(sub) == [("online", False), ("offline", False)]
        assert retained_status(broker) == "offline"


@pytest.mark.broker(persistence=True, max_queued_messages=0)
def test_results_during_broker_outage_all_arrive_in_order(broker: Broker) -> None:
    """5,000 results produced while the broker is dead arrive after it is back, in order.

    The subscriber keeps a persistent session (saved by a clean broker stop before the
    test load), so it receives whatever the broker takes while it reconnects too.
    """
    sub = Subscriber(broker, [RESULTS, STATUS], protocol="3.1.1", client_id="tsub", persistent=True)
    sub.start()
    broker.restart()  # saves the subscriber's session; a later kill() keeps it
    link = link_for(broker, qos=1)
    stop = threading.Event()
    produced: list[int] = []

    def produce() -> None:  # load before and across the kill, like a busy worker
        seq = 0
        while not stop.is_set() and seq < 2000:
            link.publish_result(result(seq))
            produced.append(seq)
            seq += 1
            if seq % 50 == 0:
                stop.wait(0.005)

    link.start()
    try:
        wait_for(lambda: link.stats().connected, what="connect")
        worker = threading.Thread(target=produce)
        worker.start()
        wait_for(lambda: len(produced) >= 500, what="load before the outage")
        broker.kill()
        stop.set()
        worker.join(30)
        wait_for(lambda: not link.stats().connected, what="the link to notice the outage")
        first_outage = len(produced)
        for seq in range(first_outage, first_outage + 5000):
            link.publish_result(result(seq))  # never blocks: all go to the backlog
        assert link.stats().backlog >= 5000
        broker.start()
        last = first_outage + 4999
        wait_for(
            lambda: any(json.loads(m.payload)["request_id"] == str(last) for m in sub.on(RESULTS)),
            timeout=120,
            what="the last outage result",
        )
        link.stop()
        sub.wait_for(STATUS, count=2)
        wait_for(lambda: status_values(sub)[-1] == ("offline", False), what="offline")
    finally:
        link.stop()
        sub.stop()
    seqs = [int(json.loads(m.payload)["request_id"]) for m in sub.on(RESULTS)]
    outage = [s for s in seqs if s >= first_outage]
    assert outage == list(range(first_outage, first_outage + 5000))  # none lost, in order
    assert seqs == sorted(seqs)  # and nothing older came after anything newer
    assert link.stats().backlog_dropped == 0
    assert ("online", False) in status_values(sub)


@pytest.mark.broker(max_queued_messages=0)
def test_qos0_results_across_a_broker_kill_are_each_written_once(broker: Broker) -> None:
    """At QoS 0 the link tracks paho's writes without a callback per message: results it
    handed to paho that were not written when the broker died go out again after the
    restart, none twice, and the subscriber sees what it gets in order."""
    link = link_for(broker, qos=0, backlog_limit=10_000)
    link.start()
    count = 3000
    try:
        wait_for(lambda: link.stats().connected, what="connect")
        with Subscriber(broker, [RESULTS], protocol="3.1.1") as sub:
            for seq in range(count // 2):
                link.publish_result(result(seq))
            broker.kill()  # whatever paho had not written yet must not be counted as sent
            for seq in range(count // 2, count):
                link.publish_result(result(seq))
        broker.start()
        with Subscriber(broker, [RESULTS], protocol="3.1.1") as after:
            wait_for(lambda: link.stats().backlog == 0, timeout=60, what="the backlog to drain")
            link.publish_result(result(count))
            wait_for(
                lambda: any(
                    json.loads(m.payload)["request_id"] == str(count) for m in after.on(RESULTS)
                ),
                what="the marker result",
            )
            # the subscriber can see the marker before paho's thread marks it written
            wait_for(
                lambda: link.stats().published >= count + 1 + link.stats().connects,
                timeout=10,
                what="paho to record the marker as written",
            )
        stats = link.stats()
    finally:
        link.stop()
    # every result written exactly once, plus "online" at each of the two connects
    assert stats.published == count + 1 + stats.connects
    assert stats.connects == 2 and stats.backlog_dropped == 0
    seen = [int(json.loads(m.payload)["request_id"]) for m in sub.on(RESULTS) + after.on(RESULTS)]
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert seen[-1] == count


@pytest.mark.broker(max_queued_messages=0)
def test_results_from_several_threads_across_a_broker_kill_arrive_whole_once_in_order(
    broker: Broker,
) -> None:
    """Workers' lanes publish from their own threads, and each writes its result to the
    socket itself when no other thread is writing (transport._Client.direct_writes). Four
    threads publishing 40 KB results at once (more than the socket takes in one write),
    across a broker kill: every result reaches a subscriber whole, at most once, each
    thread's in its order; each is written exactly once; and the link carries on."""
    link = link_for(broker, qos=0, backlog_limit=10_000)
    threads, per_thread, pad = 4, 300, "x" * 40_000
    stop = threading.Event()
    sent: dict[int, int] = {}

    def produce(lane: int) -> None:
        for n in range(per_thread):
            seq = lane * per_thread + n
            req = Request(model="m", payload=b"", kind="tensor", id=str(seq), source="test")
            link.publish_result(Result(req, "usb:2-1", {"pad": pad}, timing=Timing(0, 0, 1, 0)))
            sent[lane] = n + 1
            if stop.is_set():
                stop.wait(0.001)

    link.start()
    try:
        wait_for(lambda: link.stats().connected, what="connect")
        with Subscriber(broker, [RESULTS], protocol="3.1.1") as sub:
            workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
            for w in workers:
                w.start()
            wait_for(lambda: sum(sent.values()) >= threads * per_thread // 3, what="load")
            broker.kill()
            stop.set()
            for w in workers:
                w.join(60)
        broker.start()
        with Subscriber(broker, [RESULTS], protocol="3.1.1") as after:
            wait_for(lambda: link.stats().backlog == 0, timeout=60, what="the backlog to drain")
            link.publish_result(result(10_000))
            wait_for(
                lambda: any(
                    json.loads(m.payload)["request_id"] == "10000" for m in after.on(RESULTS)
                ),
                what="the marker result",
            )
            total = threads * per_thread + 1
            wait_for(
                lambda: link.stats().published >= total + link.stats().connects,
                timeout=10,
                what="paho to record every result as written",
            )
        stats = link.stats()
    finally:
        link.stop()
    assert stats.published == total + stats.connects  # each written once, plus "online"s
    assert stats.connects == 2 and stats.backlog_dropped == 0
    docs = [json.loads(m.payload) for m in sub.on(RESULTS) + after.on(RESULTS)]
    assert all(d["result"] == {"pad": pad} for d in docs if d["request_id"] != "10000")
    seen = [int(d["request_id"]) for d in docs]
    assert len(seen) == len(set(seen))
    for lane in range(threads):
        mine = [s for s in seen if lane * per_thread <= s < (lane + 1) * per_thread]
        assert mine == sorted(mine)


@pytest.mark.broker(max_queued_messages=0)
def test_results_faster_than_the_broker_acknowledges_are_held_back_not_dropped(
    broker: Broker,
) -> None:
    """Workers producing QoS 1 results faster than the broker acknowledges them are slowed
    to its pace while connected; none is dropped, even with no outage backlog at all."""
    link = link_for(broker, qos=1, backlog_limit=0)
    link.start()
    threads, per_thread = 3, 2000
    try:
        wait_for(lambda: link.stats().connected, what="connect")
        with Subscriber(broker, [RESULTS], protocol="3.1.1") as sub:

            def produce(first: int) -> None:
                for seq in range(first, first + per_thread):
                    link.publish_result(result(seq))

            workers = [
                threading.Thread(target=produce, args=(n * per_thread,)) for n in range(threads)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join(120)
            total = threads * per_thread
            wait_for(lambda: len(sub.on(RESULTS)) >= total, timeout=60, what="every result")
            stats = link.stats()
    finally:
        link.stop()
    assert stats.backlog_dropped == 0
    seen = [int(json.loads(m.payload)["request_id"]) for m in sub.on(RESULTS)]
    assert sorted(seen) == list(range(total))


@pytest.mark.broker(max_queued_messages=0)
def test_a_result_acknowledged_just_before_the_link_broke_is_not_counted_as_waiting(
    broker: Broker,
) -> None:
    """A result the broker acknowledges between paho taking it and the link recording it,
    with the link breaking in that gap, is delivered: the link must not keep waiting for
    its acknowledgement (health would show a backlog of 1 for ever, and every reconnect
    would hold new results back while it waited for paho to resend it)."""
    link = link_for(broker, qos=1)
    client = link._client
    real_publish = client.publish
    paused: list[Any] = []

    def publish_then_break(*args: Any, **kw: Any) -> Any:
        info = real_publish(*args, **kw)
        if not paused and kw.get("qos") == 1 and not kw.get("retain"):
            paused.append(info)
            info.wait_for_publish(10)  # the broker acknowledged it...
            broker.kill()  # ...and the link breaks before publish() has returned
            wait_for(lambda: not link.stats().connected, what="the link to notice")
        return info

    link.start()
    try:
        wait_for(lambda: link.stats().connected, what="connect")
        client.publish = publish_then_break
        with Subscriber(broker, [RESULTS], protocol="3.1.1") as sub:
            link.publish_result(result(1))
            assert paused and paused[0].is_published()
            (msg,) = sub.wait_for(RESULTS, timeout=10)
            assert json.loads(msg.payload)["request_id"] == "1"
        broker.start()
        wait_for(lambda: link.stats().connected, what="reconnect")
        wait_for(lambda: link.stats().backlog == 0, timeout=30, what="an empty backlog")
    finally:
        link.stop()


@pytest.mark.broker(max_queued_messages=0)
def test_backlog_keeps_the_newest_up_to_its_limit(broker: Broker) -> None:
    link = link_for(broker, qos=0, backlog_limit=100)
    link.start()
    try:
        wait_for(lambda: link.stats().connected, what="connect")
        broker.kill()
        wait_for(lambda: not link.stats().connected, what="the link to notice the outage")
        for seq in range(250):
            link.publish_result(result(seq))
        stats = link.stats()
        assert (stats.backlog, stats.backlog_dropped) == (100, 150)
        broker.start()
        with Subscriber(broker, [RESULTS], protocol="3.1.1") as sub:
            # the link may already be back: the results it sent before we subscribed are
            # not ours to see, but what we do see must be the newest, in order
            wait_for(lambda: link.stats().backlog == 0, timeout=60, what="the backlog to drain")
            link.publish_result(result(1000))
            sub.wait_for(RESULTS, timeout=60)
            wait_for(
                lambda: any(json.loads(m.payload)["request_id"] == "1000" for m in sub.on(RESULTS)),
                what="the marker result",
            )
            seqs = [int(json.loads(m.payload)["request_id"]) for m in sub.on(RESULTS)]
        assert seqs == sorted(seqs)
        assert all(s >= 150 for s in seqs)
        assert retained_status(broker) == "online"
    finally:
        link.stop()


@pytest.mark.broker(tls=True)
def test_tls_with_a_generated_ca(broker: Broker) -> None:
    mqtt_cfg = replace(
        MqttConfig(), host="localhost", port=broker.port, tls=True, ca_file=broker.certs["ca"]
    )
    link = MqttLink(mqtt_cfg, NODE, on_request=refuse)
    link.start()
    try:
        wait_for(lambda: link.stats().connected, what="a TLS connection")
        with Subscriber(broker, [RESULTS]).tls(broker.certs["ca"]) as sub:
            link.publish_result(result(7))
            (msg,) = sub.wait_for(RESULTS)
            assert json.loads(msg.payload)["result"] == {"seq": 7}
    finally:
        link.stop()


@pytest.mark.broker(tls=True)
def test_tls_refuses_a_broker_the_ca_did_not_sign(tmp_path: Path, broker: Broker) -> None:
    other = tmp_path / "other-ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=other", "-keyout", str(tmp_path / "other.key"), "-out", str(other)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    mqtt_cfg = replace(MqttConfig(), host="localhost", port=broker.port, tls=True, ca_file=other)
    link = MqttLink(mqtt_cfg, NODE, on_request=refuse)
    link.start()
    try:
        wait_for(lambda: "certificate verify failed" in broker.log() or "error" in broker.log().lower(),
                   what="the handshake to fail")  # fmt: skip
        assert not link.stats().connected
    finally:
        link.stop()


@pytest.mark.broker(users={"edge": "right"})
def test_wrong_password_is_refused_logged_and_retried(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="edgetpud.mqtt")
    secret = tmp_path / "password"
    secret.write_text("wrong\n")
    secret.chmod(0o600)
    link = link_for(broker, username="edge", password_file=secret)
    link.start()
    try:
        wait_for(
            lambda: broker.log().count("not authorised") >= 3,
            timeout=60,
            what="three refused attempts at the broker",
        )
        assert not link.stats().connected
        said = [r.getMessage() for r in caplog.records if "refused user 'edge'" in r.getMessage()]
        # retried, but said once: the next line comes at the 10th attempt, not every 30 s
        assert len(said) == 1, said
        assert "(attempt 1)" in said[0]
        assert f"127.0.0.1:{broker.port}" in said[0]
        assert str(secret) in said[0]
        with Subscriber(broker, [STATUS]).login("edge", "right") as sub:
            assert sub.on(STATUS) == []  # never "online" after a refusal
    finally:
        link.stop()
    # the right password on the first line (a note below it is not part of it): connected
    secret.write_text("right\n# rotated by the admin, 2026-11\n")
    link = link_for(broker, username="edge", password_file=secret)
    link.start()
    try:
        wait_for(lambda: link.stats().connected, what="connect with the right password")
    finally:
        link.stop()


def _read_packet(conn: Any) -> tuple[int, bytes]:
    """(type, body) of the next MQTT packet on `conn`."""

    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError("the client closed the connection")
            data += chunk
        return data

    kind, length, shift = exact(1)[0] >> 4, 0, 0
    while True:
        byte = exact(1)[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return kind, exact(length)


@contextlib.contextmanager
def _stand_in_broker(
    protocol: str,
    connack_props: bytes = b"",
    on_request: Callable[[Request], str | None] = refuse,
    **cfg_options: Any,
) -> Iterator[tuple[MqttLink, socket.socket]]:
    """A listening socket in the broker's place: a link connects to it, and the test gets
    the link and the accepted connection, CONNECT read and CONNACK (accepted) sent."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        cfg = replace(MqttConfig(), host="127.0.0.1", port=port, protocol=protocol, **cfg_options)
        link = MqttLink(cfg, NODE, on_request=on_request)
        link.start()
        try:
            server.settimeout(30)
            conn, _ = server.accept()
            with conn:
                conn.settimeout(30)
                assert _read_packet(conn)[0] == 1  # CONNECT
                if protocol == "5":  # CONNACK, accepted, with its properties
                    body = b"\x00\x00" + bytes([len(connack_props)]) + connack_props
                    conn.sendall(b"\x20" + bytes([len(body)]) + body)
                else:
                    conn.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
                yield link, conn
        finally:
            link.stop(timeout=1)


def test_requests_are_subscribed_before_online_is_published() -> None:
    """A client may send a request the moment it sees `online`: on the wire, the daemon's
    SUBSCRIBE to its infer topic comes before the PUBLISH of `online`. A listening socket
    stands in for the broker (it answers CONNECT and records what follows), since a real
    broker would hide the order."""
    with _stand_in_broker("3.1.1") as (_, conn):
        conn.settimeout(2.0)
        packets = []
        with contextlib.suppress(TimeoutError, EOFError):
            while len(packets) < 20:
                packets.append(_read_packet(conn))
    order = []
    for kind, body in packets:
        if kind == 8:  # SUBSCRIBE: packet id, then (topic, options) pairs
            n = int.from_bytes(body[2:4], "big")
            order.append(("subscribe", body[4 : 4 + n].decode()))
        elif kind == 3:  # PUBLISH: topic first
            n = int.from_bytes(body[0:2], "big")
            order.append(("publish", body[2 : 2 + n].decode()))
    infer = ("subscribe", f"edgetpud/{NODE}/models/+/infer")
    online = ("publish", STATUS)
    assert infer in order and online in order, order
    assert order.index(infer) < order.index(online), order


def test_requests_the_broker_delivered_just_before_it_died_are_all_taken() -> None:
    """The broker writes 50 requests at once and dies before it reads anything back. A
    paho client reads one packet per turn of its loop when it holds no message of its own,
    then writes that request's PUBACK; the write fails on the dead socket and paho drops
    what is still unread (it took 2 of the 50). The requesters had their PUBACKs from the
    broker, so the link reads every packet already there before it writes."""
    taken: list[str] = []

    def take(request: Request) -> str | None:
        taken.append(request.id)
        return None

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    topic = f"edgetpud/{NODE}/models/m/infer".encode()
    burst = b""
    for n in range(1, 51):  # PUBLISH, QoS 1, packet id n, correlation-free: ids from the link
        body = len(topic).to_bytes(2, "big") + topic + n.to_bytes(2, "big") + png.getvalue()
        burst += b"\x32" + VariableByteIntegers.encode(len(body)) + body
    with _stand_in_broker("3.1.1", on_request=take) as (link, conn):
        link.set_models({"m": None})
        wait_for(lambda: link.stats().connected, what="the link connected")
        conn.sendall(burst)
        conn.close()  # the broker dies; it read none of the daemon's PUBACKs
        wait_for(lambda: not link.stats().connected, what="the link to notice")
        with contextlib.suppress(AssertionError):  # the count below says how many
            wait_for(lambda: len(taken) >= 50, timeout=10, what="50 requests taken")
    assert len(taken) == 50, f"{len(taken)} of 50 requests taken"
    assert link.stats().requests_accepted == 50


def test_requests_arriving_in_pieces_and_bursts_are_each_taken_at_once() -> None:
    """The link reads the broker's socket in large chunks and hands paho its packets from
    them (transport._Client._sock_recv): 60 requests written as one byte stream cut at
    arbitrary places (inside headers, lengths and payloads) and in bursts of several
    packets per write are each taken once, in order, while the connection stays up and
    idle: none waits in the buffer for the next packet to arrive."""
    taken: list[int] = []

    def take(request: Request) -> str | None:
        taken.append(int.from_bytes(request.payload[-2:], "big"))
        return None

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    topic = f"edgetpud/{NODE}/models/m/infer".encode()
    stream = b""
    for n in range(1, 61):  # PUBLISH, QoS 1, packet id n; the payload ends with n
        body = len(topic).to_bytes(2, "big") + topic + n.to_bytes(2, "big")
        body += png.getvalue() + b"x" * (n * 37) + n.to_bytes(2, "big")
        stream += b"\x32" + VariableByteIntegers.encode(len(body)) + body
    cuts = [1, 2, 3, 5, 8, 13, 200, 1, 1, 4000, 7, 150_000]  # the last piece: the rest
    with _stand_in_broker("3.1.1", on_request=take) as (link, conn):
        link.set_models({"m": None})
        wait_for(lambda: link.stats().connected, what="the link connected")
        pos = 0
        for size in cuts:
            piece = stream[pos : pos + size]
            pos += len(piece)
            conn.sendall(piece)
            time.sleep(0.02)  # separate reads
        assert pos == len(stream)
        wait_for(lambda: len(taken) >= 60, timeout=5, what="all 60 requests taken")
        assert link.stats().connected
    assert taken == list(range(1, 61))


def test_a_broker_saying_the_session_was_taken_over_names_the_client_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Brokers that say why (MQTT 5 DISCONNECT, reason 0x8E "session taken over"; mosquitto
    only closes the socket) get the cause named outright. A listening socket stands in."""
    caplog.set_level(logging.WARNING, logger="edgetpud.mqtt")
    with _stand_in_broker("5") as (link, conn):
        wait_for(lambda: link.stats().connected, what="the link connected")
        # DISCONNECT, reason 0x8E, with a reason string (paho 1.6 reads the reason code
        # only when properties follow), then the broker closes the socket
        why = b"Session taken over"
        props = b"\x1f" + len(why).to_bytes(2, "big") + why
        body = b"\x8e" + bytes([len(props)]) + props
        conn.sendall(b"\xe0" + bytes([len(body)]) + body)
        conn.shutdown(socket.SHUT_WR)
        wait_for(
            lambda: any("lost connection" in r.getMessage() for r in caplog.records),
            timeout=30,
            what="the link to report the lost session",
        )
    line = next(r.getMessage() for r in caplog.records if "lost connection" in r.getMessage())
    assert f"another client connected with this daemon's client id 'edgetpud-{NODE}'" in line
    assert "took the session over" in line and "daemon.node_id or mqtt.client_id" in line, line


def test_results_in_flight_stay_within_the_brokers_receive_maximum() -> None:
    """MQTT 5: a broker that takes at most 10 unacknowledged QoS 1 messages (CONNACK Receive
    Maximum; a strict one disconnects a client sending more) gets no more than that, the
    link's own "online"/health included, and every result once it acknowledges."""
    results_topic = f"edgetpud/{NODE}/models/m/results"
    receive_max = 10
    with _stand_in_broker("5", b"\x21" + receive_max.to_bytes(2, "big"), qos=1) as (link, conn):
        wait_for(lambda: link.stats().connected, what="the link connected")
        for seq in range(40):
            link.publish_result(result(seq))
        # read until the link stops sending (it waits for acknowledgements), then
        # acknowledge everything; an over-eager client would have sent more meanwhile
        conn.settimeout(0.3)
        unacked: list[bytes] = []  # packet ids of QoS 1 PUBLISHes not acknowledged yet
        seen: list[int] = []
        most = 0
        deadline = time.monotonic() + 30
        while len(seen) < 40 and time.monotonic() < deadline:
            try:
                kind, body = _read_packet(conn)
            except TimeoutError:
                for pid in unacked:
                    conn.sendall(b"\x40\x02" + pid)  # PUBACK
                unacked.clear()
                continue
            if kind != 3:
                continue
            n = int.from_bytes(body[0:2], "big")
            topic, packet_id = body[2 : 2 + n].decode(), body[2 + n : 4 + n]
            unacked.append(packet_id)
            most = max(most, len(unacked))
            if topic == results_topic:
                props_len = body[4 + n]  # < 128 here: a one-byte length
                seen.append(json.loads(body[5 + n + props_len :])["result"]["seq"])
    assert sorted(seen) == list(range(40)), seen
    assert most <= receive_max


def test_a_second_daemon_with_the_same_client_id_is_named_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two boxes with one hostname: the broker hands the session over (mosquitto just closes
    the socket); a connection lost soon after it was made names the client id as a suspect."""
    caplog.set_level(logging.WARNING, logger="edgetpud.mqtt")
    with Broker(tmp_path) as broker:
        first, second = link_for(broker), link_for(broker)
        first.start()
        try:
            wait_for(lambda: first.stats().connected, what="the first link connected")
            second.start()
            wait_for(
                lambda: any("lost connection" in r.getMessage() for r in caplog.records),
                timeout=30,
                what="a link losing its session",
            )
        finally:
            second.stop()
            first.stop()
    line = next(r.getMessage() for r in caplog.records if "lost connection" in r.getMessage())
    assert f"another client may be using this daemon's client id 'edgetpud-{NODE}'" in line, line
    assert "daemon.node_id or mqtt.client_id" in line, line
