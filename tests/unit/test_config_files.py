"""check-config on the files a config names and on files that are not TOML at all.

TLS certificates, keys and the password file must be caught by check-config, with
the key to fix and what to do, instead of crashing the daemon when it starts; a
config that is a folder, not UTF-8 or not valid TOML must say how to fix it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.broker import make_certs
from tests.support.checkconfig import check, write


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, server and client certificates (PEM, keys 0600), plus an encrypted client key."""
    folder = tmp_path_factory.mktemp("certs")
    out = make_certs(folder)
    encrypted = folder / "client-encrypted.key"
    key = str(out["client_key"])
    subprocess.run(
        ["openssl", "pkey", "-in", key, "-aes256", "-passout", "pass:x", "-out", str(encrypted)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    encrypted.chmod(0o600)
    out["encrypted_key"] = encrypted
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Files that are not what a TLS or password option wants."""
    (tmp_path / "empty.pem").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("the CA is on the wiki\n")
    key = tmp_path / "text.key"
    key.write_text("not a key\n")
    key.chmod(0o600)
    return tmp_path


def lines_for(key: str, err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"{key}: ")]


def tls_config(folder: Path, **files: Path | str) -> Path:
    body = "".join(f'{name} = "{value}"\n' for name, value in files.items())
    return write(folder, f"[mqtt]\nport = 8883\ntls = true\n{body}")


# ----------------------------------------------------------------- TLS files


def test_working_certificates_are_valid(
    folder: Path, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tls_config(
        folder, ca_file=certs["ca"], cert_file=certs["client_crt"], key_file=certs["client_key"]
    )
    code, out, err = check(path, capsys)
    assert code == 0, err
    assert "valid" in out


@pytest.mark.parametrize("name", ["empty.pem", "notes.txt"])
def test_ca_file_without_a_certificate(
    folder: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, out, err = check(tls_config(folder, ca_file=folder / name), capsys)
    assert code == 1 and out == ""
    assert lines_for("mqtt.ca_file", err) == [
        f"mqtt.ca_file: {folder / name} holds no PEM certificate "
        "(X509: NO_CERTIFICATE_OR_CRL_FOUND); point it at the CA certificate that signed "
        "the broker's, in PEM form"
    ]


def test_ca_file_with_a_broken_certificate(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = folder / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    code, _, err = check(tls_config(folder, ca_file=broken), capsys)
    assert code == 1
    (line,) = lines_for("mqtt.ca_file", err)
    assert f"{broken} cannot be read as PEM certificates (" in line
    assert "point it at the CA certificate that signed the broker's, in PEM form" in line


def test_key_of_another_certificate(
    folder: Path, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tls_config(folder, cert_file=certs["client_crt"], key_file=certs["server_key"])
    code, _, err = check(path, capsys)
    assert code == 1
    (line,) = lines_for("mqtt.cert_file", err)
    assert line.startswith("mqtt.cert_file: cannot load the client certificate with mqtt.key_file")
    assert f"{certs['server_key']} is not the private key of that certificate" in line
    assert "KEY_VALUES_MISMATCH" in line
    assert line.endswith("check both are PEM and the key belongs to the certificate")


def test_cert_file_that_is_not_a_certificate(
    folder: Path, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tls_config(folder, cert_file=folder / "notes.txt", key_file=certs["client_key"])
    code, _, err = check(path, capsys)
    assert code == 1
    (line,) = lines_for("mqtt.cert_file", err)
    assert f"{folder / 'notes.txt'} holds no PEM certificate" in line
    assert "check both are PEM" in line


def test_key_file_that_is_not_a_key(
    folder: Path, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tls_config(folder, cert_file=certs["client_crt"], key_file=folder / "text.key")
    code, _, err = check(path, capsys)
    assert code == 1
    (line,) = lines_for("mqtt.cert_file", err)
    assert f"{folder / 'text.key'} holds no PEM private key" in line
    assert "check both are PEM and the key belongs to the certificate" in line


def test_cert_file_without_its_key(
    folder: Path, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without key_file the key must be in cert_file; a bare certificate cannot be used."""
    code, _, err = check(tls_config(folder, cert_file=certs["client_crt"]), capsys)
    assert code == 1
    (line,) = lines_for("mqtt.cert_file", err)
    assert f"cannot load the client certificate and its key from {certs['client_crt']}" in line
    assert "or set mqtt.key_file" in line


def test_cert_and_key_in_one_file_is_valid(
    folder: Path, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    both = folder / "client.pem"
    both.write_bytes(certs["client_crt"].read_bytes() + certs["client_key"].read_bytes())
    code, _, err = check(tls_config(folder, cert_file=both), capsys)
    assert code == 0, err


def test_encrypted_key_is_refused_without_prompting(
    folder: Path, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon has no terminal for a pass phrase: say so, and never block on a prompt."""
    path = tls_config(folder, cert_file=certs["client_crt"], key_file=certs["encrypted_key"])
    code, _, err = check(path, capsys)
    assert code == 1
    (line,) = lines_for("mqtt.key_file", err)
    assert "is encrypted with a pass phrase" in line and "openssl pkey -in" in line


def test_missing_tls_file_is_reported_once(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = check(tls_config(folder, ca_file=folder / "absent.pem"), capsys)
    assert code == 1
    (line,) = lines_for("mqtt.ca_file", err)
    assert "does not exist" in line


def test_tls_files_are_not_loaded_without_tls(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(folder, f'[mqtt]\nca_file = "{folder / "empty.pem"}"\n')
    code, _, err = check(path, capsys)
    assert code == 1
    assert lines_for("mqtt.ca_file", err) == [
        "mqtt.ca_file: is set but mqtt.tls is false; set tls = true to use it"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_tls_files_this_user_cannot_read_are_not_judged(
    folder: Path, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin may check a config whose key only the service's user can read."""
    key = folder / "service-only.key"
    key.write_bytes(certs["client_key"].read_bytes())
    key.chmod(0)
    path = tls_config(folder, ca_file=certs["ca"], cert_file=certs["client_crt"], key_file=key)
    code, _, err = check(path, capsys)
    assert code == 0, err


# ----------------------------------------------------------------- password file


def test_password_file_not_utf8(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = folder / "pw"
    pw.write_bytes(b"s\xe9cret\n")  # Latin-1
    pw.chmod(0o600)
    path = write(folder, '[mqtt]\nusername = "edge"\npassword_file = "pw"\n')
    code, _, err = check(path, capsys)
    assert code == 1
    assert lines_for("mqtt.password_file", err) == [
        f"mqtt.password_file: {pw} is not UTF-8 text (byte 1); write the password as the "
        "first line in UTF-8"
    ]


def test_utf8_password_file_is_valid(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = folder / "pw"
    pw.write_text("sécret\n", encoding="utf-8")
    pw.chmod(0o600)
    code, _, err = check(write(folder, '[mqtt]\nusername = "edge"\npassword_file = "pw"\n'), capsys)
    assert code == 0, err


# ----------------------------------------------------------------- model names in key paths


def test_model_name_with_a_dot_is_quoted_in_key_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3")
    path = write(tmp_path, '[models."mobilenet.v2"]\nmodel = "m.tflite"\npriority = 500\n')
    code, _, err = check(path, capsys)
    assert code == 1
    assert lines_for('models."mobilenet.v2".priority', err), err


# ----------------------------------------------------------------- files that are not TOML


def unreadable(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    path = write(tmp_path, text)
    code, out, err = check(path, capsys)
    assert code == 2 and out == ""
    return path, err


def test_table_declared_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, err = unreadable(tmp_path, '[daemon]\nlog_level = "info"\n[daemon]\n', capsys)
    assert (
        f"{path}: not valid TOML: [daemon] appears twice (line 3): merge the two tables into one"
        in err
    )


def test_model_table_declared_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, err = unreadable(
        tmp_path, '[models."my cat"]\npriority = 1\n\n[models."my cat"]\npriority = 2\n', capsys
    )
    assert '[models."my cat"] appears twice (line 4): merge the two tables into one' in err


def test_key_set_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, err = unreadable(tmp_path, "[mqtt]\nport = 1883\nport = 8883\n", capsys)
    assert 'not valid TOML: "port" is set twice (line 3, column 12): keep one' in err


def test_other_toml_errors_keep_the_position_and_say_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, err = unreadable(tmp_path, "[mqtt]\nport = = 1\n", capsys)
    assert (
        "not valid TOML: Invalid value (at line 2, column 8); fix the TOML syntax at that " in err
    )
    assert f"(edgetpud check-config {path} checks it)" in err


def test_toml_error_at_the_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, err = unreadable(tmp_path, '[devices]\nallow = ["2-*"', capsys)
    assert "(at end of document); fix the TOML syntax near the end of the file" in err


def test_config_path_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etc = tmp_path / "edgetpud"
    etc.mkdir()
    code, _, err = check(etc, capsys)
    assert code == 2
    assert f"{etc}: is a folder, not a config file; give the .toml file inside it" in err
    (etc / "edgetpud.toml").write_text("[daemon]\n")
    code, _, err = check(etc, capsys)
    assert code == 2
    assert f"give the .toml file inside it, such as {etc / 'edgetpud.toml'}" in err


def test_config_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edgetpud.toml"
    path.write_bytes('[daemon]\nnode_id = "küche"\n'.encode("latin-1"))
    code, _, err = check(path, capsys)
    assert code == 2
    assert f"{path}: not UTF-8 text (byte 21); re-save it as UTF-8" in err
