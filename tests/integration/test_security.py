"""The daemon against a locked-down mosquitto: TLS, a password file and an ACL made here.

- With an ACL that allows the daemon exactly `<prefix>/<node>/#`, it works (health,
  requests in, results out) and the broker denies it nothing: it publishes and
  subscribes only under its prefix.
- A wrong password is refused with a clear log line and retried with backoff: the
  broker sees a handful of connection attempts over ~10 s, not a busy loop.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.support.broker import Broker, Subscriber
from tests.support.daemon import Daemon, config_toml
from tests.support.polling import wait_for

PREFIX = "sec"
NODE = "box"
BASE = f"{PREFIX}/{NODE}"
ACL = f"""
user edge
topic readwrite {BASE}/#

user tester
topic readwrite #
"""


def daemon_config(tmp: Path, broker: Broker, models_dir: Path, password_file: Path) -> str:
    tls = ""
    if broker.certs:
        tls = f'tls = true\nca_file = "{broker.certs["ca"]}"\n'
    return config_toml(
        node=NODE,
        state_dir=tmp / "state",
        port=broker.port,
        prefix=PREFIX,
        library=tmp / "no-libedgetpu.so.1",
        mqtt=f'username = "edge"\npassword_file = "{password_file}"\n{tls}',
        rest=f'[models.colours]\nmodel = "{models_dir}/mobilenet_v1_0.25_128_quant.tflite"\n'
        'device = "cpu"\n',
    )


def secret(tmp: Path, text: str) -> Path:
    path = tmp / "mqtt-password"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def locked_broker(tmp: Path, *, tls: bool) -> Broker:
    broker = Broker(tmp, tls=tls, users={"edge": "right-pw", "tester": "t"}, acl=ACL)
    with broker.conf.open("a") as fh:
        fh.write("log_type debug\n")  # "Denied PUBLISH/SUBSCRIBE" lines are debug
    return broker


@pytest.mark.timeout(120)
def test_tls_password_and_an_acl_of_exactly_the_prefix_is_enough(
    tmp_path: Path, models_dir: Path
) -> None:
    with locked_broker(tmp_path, tls=True) as broker:
        sub = Subscriber(broker, ["#"]).tls(broker.certs["ca"]).login("tester", "t").start()
        d = Daemon(
            tmp_path / "d",
            daemon_config(tmp_path, broker, models_dir, secret(tmp_path, "right-pw")),
        )
        try:
            d.start().wait_ready()
            wait_for(lambda: sub.on(f"{BASE}/health"), 60, "retained health over TLS")
            sub.publish(f"{BASE}/models/colours/infer", b"\x00" * 5, CorrelationData=b"bad")
            image = (models_dir / "cat.bmp").read_bytes()
            sub.publish(f"{BASE}/models/colours/infer", image, CorrelationData=b"good")

            def answers() -> dict[str, dict[str, object]]:
                msgs = [json.loads(m.payload) for m in sub.on(f"{BASE}/models/colours/results")]
                return {str(r["request_id"]): r for r in msgs}

            wait_for(lambda: {"bad", "good"} <= set(answers()), 60, "both answers")
            assert answers()["bad"]["reason"] == "bad_size"
            assert "error" not in answers()["good"], answers()["good"]
            assert d.stop() == 0
            wait_for(
                lambda: any(m.payload == b"offline" for m in sub.on(f"{BASE}/status")),
                30,
                "offline",
            )
        finally:
            d.close()
            sub.stop()
        topics = {m.topic for m in sub.messages}
        outside = sorted(t for t in topics if not t.startswith(f"{BASE}/"))
        assert not outside, outside
        denied = [x for x in broker.log().splitlines() if "Denied" in x]
        assert not denied, denied
        assert "tls_insecure" not in d.log()


@pytest.mark.timeout(120)
def test_a_wrong_password_is_refused_logged_and_retried_with_backoff(
    tmp_path: Path, models_dir: Path
) -> None:
    with locked_broker(tmp_path, tls=False) as broker:
        d = Daemon(
            tmp_path / "d",
            daemon_config(tmp_path, broker, models_dir, secret(tmp_path, "wrong-pw")),
        )
        try:
            d.start().wait_ready()  # the daemon starts and serves nothing over MQTT yet
            watch_from = time.monotonic()
            wait_for(lambda: "refused" in d.log(), 30, "the refusal in the daemon's log")
            time.sleep(10)
            attempts = len(re.findall(r"New connection from", broker.log()))
            watched = time.monotonic() - watch_from
            assert d.proc is not None and d.proc.poll() is None
        finally:
            d.stop()
            d.close()
        refused = [x for x in d.log().splitlines() if "refused" in x and "MQTT" in x]
        assert refused
        assert "mqtt.username" in refused[0] and "password" in refused[0]
        # a busy loop would be hundreds; 1 s doubling to 30 s gives a handful in ~10 s
        assert 2 <= attempts <= 8, (attempts, watched)
