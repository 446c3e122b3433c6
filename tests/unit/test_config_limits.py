"""Misconfigurations an admin (or an attacker with write access to one file) can make,
and what `edgetpud check-config` says about them.

Paths that are not files are named for what they are (a FIFO, a device node, a
symbolic link loop), never "does not exist"; a model that is not TensorFlow Lite and a
label file that is not labels fail check-config, not the running daemon; and every size
a user controls has a limit in the schema with an error that names it (docs/reliability.md,
"Limits").
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edgetpud import config, labels
from edgetpud.errors import ConfigError, ModelError
from tests.support.checkconfig import check, write

MODEL_HEADER = b"\x1c\x00\x00\x00TFL3" + b"\x00" * 24


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "m.tflite").write_bytes(MODEL_HEADER)
    (tmp_path / "labels.txt").write_text("background\ncat\ndog\n")
    return tmp_path


def problems(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code, _, err = check(path, capsys)
    assert code == 1, err
    return err


def model_config(folder: Path, body: str = "") -> Path:
    return write(folder, f'[models.cat]\nmodel = "m.tflite"\nlabels = "labels.txt"\n{body}')


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("fifo", "is a named pipe (FIFO), not a file; point it at a regular file"),
        ("device", "is a character device node, not a file; point it at a regular file"),
        ("loop", "is a symbolic link loop (following it leads back to itself), not a file"),
        ("dangling", "is a symbolic link to gone.tflite, which does not exist"),
        ("missing", "does not exist; fix the path or create the file"),
    ],
)
@pytest.mark.parametrize("key", ["model", "labels"])
def test_a_path_that_is_no_file_is_named_for_what_it_is(
    folder: Path, capsys: pytest.CaptureFixture[str], kind: str, said: str, key: str
) -> None:
    target = folder / "odd"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target = Path("/dev/null")
    elif kind == "loop":
        target.symlink_to(folder / "odd2")
        (folder / "odd2").symlink_to(target)
    elif kind == "dangling":
        target.symlink_to("gone.tflite")
    model = target if key == "model" else "m.tflite"
    labels_path = target if key == "labels" else "labels.txt"
    path = write(folder, f'[models.cat]\nmodel = "{model}"\nlabels = "{labels_path}"\n')
    err = problems(path, capsys)
    assert f"models.cat.{key}: {target} {said}" in err


def test_a_file_that_is_not_tflite_fails_check_config(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "m.tflite").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    (folder / "cpu.tflite").write_bytes(b"")
    err = problems(model_config(folder, 'cpu_model = "cpu.tflite"\n'), capsys)
    assert "models.cat.model: " in err and "lacks the TFL3 marker" in err
    # the daemon (and plan) do not fail the whole config: that model is disabled, the
    # others run (inspect_model says the same sentence)
    assert "cat" in config.load(model_config(folder, 'cpu_model = "cpu.tflite"\n')).models
    assert (
        f"models.cat.cpu_model: {folder / 'cpu.tflite'} is not a TensorFlow Lite model (it is empty)"
        in err
    )


def test_real_models_pass(
    models_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        f'[models.cat]\nmodel = "{models_dir}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"\n'
        f'cpu_model = "{models_dir}/mobilenet_v1_0.25_128_quant.tflite"\n'
        f'labels = "{models_dir}/imagenet_labels.txt"\n',
    )
    code, _, err = check(path, capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (MODEL_HEADER * 10, "is binary, not text (control character 0x1c at character 0)"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "is binary, not text"),
        (b"cat\n" + b"x" * 5000 + b"\n", "line 2 is 5,000 characters long, over the limit of 1024"),
        (b"a\n" * 70_000, "has 70,000 lines, over the limit of 65,536 labels"),
        (b"# " + b"y" * 3_000_000, "is 3,000,002 bytes, over the 2,097,152-byte limit"),
        (b"caf\xe9\n", "is not UTF-8 text (byte 3); re-save it as UTF-8"),
    ],
)
def test_a_labels_file_that_is_not_labels_is_refused(
    folder: Path, capsys: pytest.CaptureFixture[str], content: bytes, said: str
) -> None:
    """Labels are published verbatim in every result: a file that is not labels is refused
    by check-config, and by the daemon when it loads the model."""
    (folder / "labels.txt").write_bytes(content)
    err = problems(model_config(folder), capsys)
    assert f"models.cat.labels: label file {folder / 'labels.txt'} {said}" in err
    with pytest.raises(ModelError, match="label file"):
        labels.load_labels(folder / "labels.txt")


def test_real_label_files_pass(models_dir: Path) -> None:
    for name in ("imagenet_labels.txt", "coco_labels.txt"):
        assert len(labels.load_labels(models_dir / name)) > 80


def test_a_client_id_over_mqtts_limit_fails_check_config(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """paho's thread died silently on connect with a client id over 65,535 bytes."""
    err = problems(write(folder, f'[mqtt]\nclient_id = "{"c" * 70_000}"\n'), capsys)
    assert "mqtt.client_id: the client id is 70,000 bytes, over MQTT's limit of 65,535" in err
    err = problems(write(folder, '[mqtt]\nclient_id = "a\\u0000b"\n'), capsys)
    assert "mqtt.client_id: the client id contains a NUL character" in err
    err = problems(write(folder, f'[mqtt]\nusername = "{"u" * 65_536}"\n'), capsys)
    assert "mqtt.username: the user name is 65,536 bytes" in err
    assert check(write(folder, f'[mqtt]\nclient_id = "{"c" * 65_535}"\n'), capsys)[0] == 0


def test_a_password_over_mqtts_limit_fails_check_config(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = folder / "secret"
    secret.write_text("p" * 65_536 + "\n")
    secret.chmod(0o600)
    err = problems(write(folder, f'[mqtt]\nusername = "u"\npassword_file = "{secret}"\n'), capsys)
    assert "mqtt.password_file: " in err and "the password (first line) is 65,536 bytes" in err


def test_sizes_of_prefix_host_and_globs_are_bounded(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = "/".join(["level"] * 40)
    err = problems(write(folder, f'[mqtt]\ntopic_prefix = "{prefix}"\n'), capsys)
    assert "mqtt.topic_prefix: is 239 characters long, over the limit of 200" in err
    err = problems(write(folder, f'[mqtt]\nhost = "{"h" * 300}"\n'), capsys)
    assert "mqtt.host: " in err and "at most 253 characters" in err
    globs = ", ".join(f'"1-{i}"' for i in range(300))
    err = problems(write(folder, f"[devices]\nallow = [{globs}]\n"), capsys)
    assert "devices.allow: has 300 patterns, over the limit of 256" in err


def test_a_config_with_thousands_of_models_is_refused_at_once(folder: Path) -> None:
    """120,000 models took 40 s to check; past 256 the count alone is the answer."""
    data = {"models": {f"m{i}": {"model": "m.tflite"} for i in range(120_000)}}
    started = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        config.parse(data, base_dir=folder)
    elapsed = time.monotonic() - started
    assert [str(i) for i in exc.value.issues] == [
        "models: 120,000 models, over the limit of 256; a box serves a few dozen at most "
        "(each needs its own worker and device memory): keep the ones it runs"
    ]
    assert elapsed < 5, f"{elapsed:.1f} s"
    many = {"models": {f"m{i}": {"model": "m.tflite"} for i in range(256)}}
    assert len(config.parse(many, base_dir=folder).models) == 256


def test_max_decode_bytes_is_a_bounded_key(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config.load(write(folder, "[daemon]\nmax_decode_bytes = 33554432\n"))
    assert cfg.daemon.max_decode_bytes == 32 * 1024 * 1024
    assert config.load(write(folder, "")).daemon.max_decode_bytes == 96 * 1024 * 1024
    err = problems(write(folder, "[daemon]\nmax_decode_bytes = 1000\n"), capsys)
    assert "daemon.max_decode_bytes: must be an integer from 1048576 to 17179869184" in err
