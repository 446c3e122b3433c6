"""The daemon and TLS brokers: client certificates, and what it says when TLS is set up wrong.

- Against a mosquitto that requires a client certificate and takes the certificate's
  name as the user name (its ACL allows that user only `<prefix>/<node>/#`), the
  daemon with `cert_file`/`key_file` connects, publishes health and answers a request.
- Each usual mistake (no client certificate, a CA that did not sign the broker's
  certificate, a client certificate the broker does not trust, plain MQTT to a TLS
  port, TLS to a plain port) leaves the daemon running and retrying, and its log says
  what failed and which setting to change. paho itself reports none of this: some of
  these look to it like a connection closed for no reason.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.broker import Broker, Subscriber, make_certs
from tests.support.daemon import Daemon, config_toml
from tests.support.polling import wait_for

NODE = "box"
BASE = f"tlstest/{NODE}"
CLIENT = "edgetpud-client"  # the CN of make_certs' client certificate: the broker's user name
ACL = f"user {CLIENT}\ntopic readwrite {BASE}/#\n"


def daemon_config(tmp: Path, broker: Broker, mqtt_tls: str, models_dir: Path | None = None) -> str:
    model = (
        f'[models.colours]\nmodel = "{models_dir}/mobilenet_v1_0.25_128_quant.tflite"\n'
        'device = "cpu"\n'
        if models_dir
        else ""
    )
    return config_toml(
        node=NODE,
        state_dir=tmp / "state",
        port=broker.port,
        prefix="tlstest",
        library=tmp / "no-libedgetpu.so.1",
        mqtt=mqtt_tls,
        rest=model,
    )


def tls_lines(ca: Path, cert: Path | None = None, key: Path | None = None) -> str:
    lines = f'tls = true\nca_file = "{ca}"\n'
    if cert and key:
        lines += f'cert_file = "{cert}"\nkey_file = "{key}"\n'
    return lines


def cert_broker(tmp: Path) -> Broker:
    broker = Broker(tmp, tls=True, require_certificate=True, acl=ACL)
    with broker.conf.open("a") as fh:
        fh.write("log_type debug\n")  # "Denied PUBLISH/SUBSCRIBE" lines are debug
    return broker


@pytest.mark.timeout(120)
def test_a_client_certificate_is_enough_to_connect_and_serve(
    tmp_path: Path, models_dir: Path
) -> None:
    with cert_broker(tmp_path) as broker:
        certs = broker.certs
        sub = Subscriber(broker, [f"{BASE}/#"]).tls(
            certs["ca"], certs["client_crt"], certs["client_key"]
        )
        sub.start()
        mqtt_tls = tls_lines(certs["ca"], certs["client_crt"], certs["client_key"])
        d = Daemon(tmp_path / "d", daemon_config(tmp_path, broker, mqtt_tls, models_dir))
        try:
            d.start().wait_ready()
            wait_for(lambda: sub.on(f"{BASE}/health"), 60, "retained health over TLS")
            image = (models_dir / "cat.bmp").read_bytes()
            sub.publish(f"{BASE}/models/colours/infer", image, CorrelationData=b"cert")
            result = json.loads(sub.wait_for(f"{BASE}/models/colours/results", 1, 60)[0].payload)
            assert result["request_id"] == "cert"
            assert "error" not in result, result
            assert d.stop() == 0
        finally:
            d.close()
            sub.stop()
        assert "cannot connect" not in d.log()
        joined = [x for x in broker.log().splitlines() if f"as edgetpud-{NODE} " in x]
        assert joined and f"u'{CLIENT}'" in joined[0], joined  # the certificate named the user
        denied = [x for x in broker.log().splitlines() if "Denied" in x]
        assert not denied, denied  # the certificate's name is the user the ACL allows


@dataclass(frozen=True)
class Mistake:
    name: str
    broker_tls: bool
    says: tuple[str, ...]  # phrases the daemon's log line must hold


MISTAKES = [
    Mistake("no client certificate", True, ("requires a client certificate", "mqtt.cert_file")),
    Mistake("the wrong CA file", True, ("certificate", "not trusted", "mqtt.ca_file")),
    Mistake("a client certificate of another CA", True, ("refused the client certificate",)),
    Mistake("plain MQTT to a TLS port", True, ("expects TLS", "mqtt.tls = true")),
    Mistake("TLS to a plain port", False, ("does not speak TLS", "mqtt.tls = false")),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_a_tls_mistake_is_logged_with_what_to_change(tmp_path: Path, mistake: Mistake) -> None:
    broker = cert_broker(tmp_path) if mistake.broker_tls else Broker(tmp_path)
    ours = broker.certs or make_certs(tmp_path / "ours")
    other = make_certs(tmp_path / "other")  # a second CA, and a client certificate it signed
    mqtt_tls = {
        "no client certificate": tls_lines(ours["ca"]),
        "the wrong CA file": tls_lines(other["ca"], ours["client_crt"], ours["client_key"]),
        "a client certificate of another CA": tls_lines(
            ours["ca"], other["client_crt"], other["client_key"]
        ),
        "plain MQTT to a TLS port": "",
        "TLS to a plain port": tls_lines(ours["ca"]),
    }[mistake.name]
    with broker:
        d = Daemon(tmp_path / "d", daemon_config(tmp_path, broker, mqtt_tls))
        try:
            d.start().wait_ready()

            def explained() -> list[str]:
                return [x for x in d.log().splitlines() if "cannot connect to" in x]

            line = wait_for(explained, 30, "the failed connection explained in the log")[0]
            assert d.proc is not None and d.proc.poll() is None  # still running, retrying
        finally:
            code = d.stop()
            d.close()
        for phrase in mistake.says:
            assert phrase in line, line
        assert "retrying" in line
        assert "Traceback" not in d.log()
        assert code == 0


@pytest.mark.timeout(120)
def test_after_a_tls_refusal_the_daemon_retries_and_connects_once_the_broker_is_fixed(
    tmp_path: Path,
) -> None:
    """A TLS alert must not end the retrying (it did with paho 1.6: its thread died)."""
    broker = cert_broker(tmp_path)
    with broker:
        d = Daemon(tmp_path / "d", daemon_config(tmp_path, broker, tls_lines(broker.certs["ca"])))
        try:
            d.start().wait_ready()
            wait_for(lambda: "requires a client certificate" in d.log(), 30, "the refusal")
            # the admin drops the requirement on the broker side, same port
            conf = broker.conf.read_text()
            for line in ("require_certificate true", "use_identity_as_username true"):
                conf = conf.replace(line + "\n", "")
            broker.conf.write_text(conf.replace(f"acl_file {broker.folder}/acl\n", ""))
            broker.restart()
            wait_for(lambda: "MQTT: connected to" in d.log(), 60, "the daemon connected")
            assert d.proc is not None and d.proc.poll() is None
        finally:
            code = d.stop()
            d.close()
        assert code == 0
        assert "Traceback" not in d.log()


def test_a_credential_file_broken_after_validation_stops_the_start_with_a_sentence(
    tmp_path: Path,
) -> None:
    """The CA file is replaced between validation and use: no traceback, a ConfigUnreadableError."""
    from edgetpud import app, config
    from edgetpud.errors import ConfigUnreadableError

    ca = make_certs(tmp_path / "certs")["ca"]
    path = tmp_path / "edgetpud.toml"
    path.write_text(daemon_config(tmp_path, Broker(tmp_path), tls_lines(ca)))
    cfg = config.load(path)
    ca.write_text("not a certificate\n")
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        with pytest.raises(ConfigUnreadableError) as err:
            app.run(cfg)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    message = str(err.value)
    assert f"mqtt.ca_file = {ca}" in message and "PEM" in message, message
