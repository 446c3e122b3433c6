"""Why the MQTT broker cannot be reached: a socket and TLS probe that names the cause.

paho reports a failed connection attempt without its cause, and a broker that drops
the connection during or right after the TLS handshake (a client certificate it
requires, a TLS listener spoken to in plain MQTT) looks to paho like an ordinary
disconnect. `probe()` repeats the attempt's network steps itself, with the config's
TLS settings, and returns one sentence saying what failed and what to change, or None
when TCP and TLS both succeed (the cause then lies in MQTT: the broker's log says it).

Plain `socket` and `ssl` only, no paho. The one MQTT packet it may send is a CONNECT
over plain TCP, to tell a plain MQTT listener from a broken TLS one.
"""

from __future__ import annotations

import contextlib
import socket
import ssl

from edgetpud.config import MqttConfig

#: TLS alerts a broker sends when it does not accept the client's certificate (or its absence)
_CERT_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "HANDSHAKE_FAILURE",
    "UNKNOWN_CA",
    "BAD_CERTIFICATE",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "ACCESS_DENIED",
)


def probe(cfg: MqttConfig, timeout: float = 5.0) -> str | None:
    """What stops a connection to the configured broker at the network or TLS level."""
    where = f"{cfg.host}:{cfg.port}"
    try:
        sock = socket.create_connection((cfg.host, cfg.port), timeout=timeout)
    except socket.gaierror as exc:
        return f"cannot resolve the host name {cfg.host!r} ({exc.strerror}); check mqtt.host"
    except ConnectionRefusedError:
        return (
            f"nothing listens on {where} (connection refused); start the broker, or check "
            "mqtt.host and mqtt.port"
        )
    except TimeoutError:
        return (
            f"no answer from {where} within {timeout:.0f} s; check mqtt.host, the network "
            "and any firewall between this machine and the broker"
        )
    except OSError as exc:
        return f"cannot connect to {where}: {exc.strerror or exc}; check mqtt.host and the network"
    with sock:
        if cfg.tls:
            return _tls_problem(cfg, sock, timeout)
        return _plain_problem(cfg, sock, timeout)


def _tls_problem(cfg: MqttConfig, sock: socket.socket, timeout: float) -> str | None:
    where = f"{cfg.host}:{cfg.port}"
    try:
        context = _context(cfg)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot load the TLS files: {exc}; check mqtt.ca_file, mqtt.cert_file and mqtt.key_file"
    try:
        with context.wrap_socket(sock, server_hostname=cfg.host) as tls:
            # TLS 1.3 servers judge the client certificate after the handshake: their
            # refusal arrives as an alert on the first read. Silence means accepted.
            tls.settimeout(min(timeout, 1.0))
            with contextlib.suppress(TimeoutError):
                tls.recv(1)
    except ssl.SSLCertVerificationError as exc:
        return f"the broker's certificate at {where} is not trusted: {exc.verify_message}; " + (
            "mqtt.host must be a name (or address) the certificate was issued for"
            if "mismatch" in (exc.verify_message or "").lower()
            else "set mqtt.ca_file to the CA certificate that signed it"
        )
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
            return (
                f"{where} does not speak TLS ({reason}); set mqtt.tls = false, or use the "
                "broker's TLS port (often 8883)"
            )
        if any(alert in reason for alert in _CERT_ALERTS):
            if cfg.cert_file is None:
                return (
                    f"the broker at {where} requires a client certificate ({reason}); set "
                    "mqtt.cert_file and mqtt.key_file"
                )
            return (
                f"the broker at {where} refused the client certificate {cfg.cert_file} "
                f"({reason}); check that it is signed by a CA the broker trusts (its cafile) "
                "and has not expired"
            )
        return f"the TLS handshake with {where} failed ({reason}); check the mqtt TLS settings"
    except (ConnectionError, EOFError, TimeoutError, OSError) as exc:
        if _speaks_plain_mqtt(cfg, timeout):
            return (
                f"{where} does not speak TLS: it answered plain MQTT; set mqtt.tls = false, "
                "or use the broker's TLS port (often 8883)"
            )
        return (
            f"{where} closed the connection during the TLS handshake ({exc or type(exc).__name__}); "
            "check that it is the broker's TLS port and the broker's log for the reason"
        )
    return None


def _plain_problem(cfg: MqttConfig, sock: socket.socket, timeout: float) -> str | None:
    """Plain MQTT configured: does the port answer a TLS handshake instead?"""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with context.wrap_socket(sock, server_hostname=cfg.host):
            pass
    except (ssl.SSLError, OSError):
        return None  # not TLS: the network is fine, the cause is in MQTT
    return (
        f"{cfg.host}:{cfg.port} expects TLS; set mqtt.tls = true (and mqtt.ca_file), or use "
        "the broker's plain MQTT port (often 1883)"
    )


def _speaks_plain_mqtt(cfg: MqttConfig, timeout: float) -> bool:
    """Whether the port answers an MQTT 3.1.1 CONNECT with a CONNACK (of any verdict)."""
    client_id = b"edgetpud-probe"
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection((cfg.host, cfg.port), timeout=timeout) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            answer = sock.recv(1)
            if answer == b"\x20":
                with contextlib.suppress(OSError):
                    sock.sendall(b"\xe0\x00")  # DISCONNECT
            return answer == b"\x20"
    except OSError:
        return False


def _context(cfg: MqttConfig) -> ssl.SSLContext:
    """The context paho's `tls_set()` builds from the same settings."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cfg.cert_file is not None:
        context.load_cert_chain(
            str(cfg.cert_file), str(cfg.key_file) if cfg.key_file is not None else None
        )
    if cfg.ca_file is not None:
        context.load_verify_locations(str(cfg.ca_file))
    else:
        context.load_default_certs()
    context.check_hostname = not cfg.tls_insecure
    return context
