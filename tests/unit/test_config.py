"""check-config: what an admin sees for valid, broken and unreadable configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgetpud import config
from edgetpud.errors import ConfigError
from tests.support.checkconfig import check, write

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "etc" / "edgetpud" / "edgetpud.toml"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder with the files a config may name: models, labels, a 0600 password file."""
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3")
    (tmp_path / "m_edgetpu.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3")
    (tmp_path / "labels.txt").write_text("0 cat\n")
    (tmp_path / "labels.d").mkdir()
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    open_pw = tmp_path / "open-pw"
    open_pw.write_text("secret\n")
    open_pw.chmod(0o644)
    return tmp_path


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(EXAMPLE, capsys)
    assert code == 0, err
    assert "valid" in out


def test_example_config_documents_every_option() -> None:
    """Each option of each section appears (set or commented) in the example."""
    text = EXAMPLE.read_text()
    for section, cls in config.SECTIONS.items():
        assert f"[{section}]" in text
        for name in cls.__dataclass_fields__:
            assert f"{name} =" in text, f"{section}.{name} is not in the example config"


def test_minimal_config_gets_defaults(files: Path) -> None:
    cfg = config.load(write(files, '[models.cat]\nmodel = "m.tflite"\n'))
    model = cfg.models["cat"]
    assert model.model == files / "m.tflite"  # relative to the config's folder
    assert model.priority == 50 and model.replicas == 1 and model.device == "any"
    assert model.source.type == "mqtt" and model.postprocess.type == "raw"
    assert cfg.mqtt.port == 1883 and cfg.mqtt.backlog_limit == 10000
    assert cfg.daemon.node_id  # the hostname, made topic-safe
    assert "/" not in cfg.daemon.node_id and " " not in cfg.daemon.node_id


def test_state_dir_defaults_to_systemds_state_directory(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edgetpud-test:/other")
    assert config.load(write(files, "[daemon]\n")).daemon.state_dir == Path(
        "/var/lib/edgetpud-test"
    )
    monkeypatch.delenv("STATE_DIRECTORY")
    assert config.load(write(files, "[daemon]\n")).daemon.state_dir == Path("/var/lib/edgetpud")
    explicit = config.load(write(files, '[daemon]\nstate_dir = "st"\n'))
    assert explicit.daemon.state_dir == files / "st"


def test_durations_accept_units(files: Path) -> None:
    cfg = config.load(
        write(
            files, '[daemon]\nhealth_interval = "250ms"\nstall_timeout = "2m"\ndrain_timeout = 3\n'
        )
    )
    assert cfg.daemon.health_interval == pytest.approx(0.25)
    assert cfg.daemon.stall_timeout == 120
    assert cfg.daemon.drain_timeout == 3


def test_max_batch_wait_is_a_duration_per_model(files: Path) -> None:
    model = f'[models.a]\nmodel = "{files / "m_edgetpu.tflite"}"\n'
    cfg = config.load(write(files, model + 'max_batch_wait = "20ms"\n'))
    assert cfg.models["a"].max_batch_wait == pytest.approx(0.02)
    assert config.load(write(files, model)).models["a"].max_batch_wait == pytest.approx(0.05)
    with pytest.raises(ConfigError, match=r"models\.a\.max_batch_wait"):
        config.load(write(files, model + 'max_batch_wait = "forever"\n'))


def test_segments_name_a_pipelined_model_and_model_is_segment_0(files: Path) -> None:
    seg = [files / f"m_segment_{k}_of_2_edgetpu.tflite" for k in (0, 1)]
    for path in seg:
        path.write_bytes(b"\x1c\x00\x00\x00TFL3")
    listed = f'segments = ["{seg[0]}", "{seg[1]}"]\n'
    cfg = config.load(write(files, f'[models.a]\nmodel = "{seg[0]}"\n' + listed))
    assert cfg.models["a"].segments == tuple(seg)
    with pytest.raises(ConfigError, match=r"models\.a\.model: with segments, model must be"):
        config.load(write(files, f'[models.a]\nmodel = "{seg[1]}"\n' + listed))
    with pytest.raises(ConfigError, match=r"models\.a\.replicas: a pipelined model"):
        config.load(write(files, f'[models.a]\nmodel = "{seg[0]}"\nreplicas = 2\n' + listed))
    with pytest.raises(ConfigError, match=r"models\.a\.segments\[1\]: .* does not exist"):
        config.load(
            write(files, f'[models.a]\nmodel = "{seg[0]}"\nsegments = ["{seg[0]}", "x.tflite"]\n')
        )


# (config text, dotted path, words the message must contain). Each is one mistake an
# admin could make; check-config must exit 1 and name the exact key.
BROKEN = [
    (
        '[daemon]\nhealth_interval = "ten seconds"',
        "daemon.health_interval",
        'duration such as "250ms"',
    ),
    ('[daemon]\nlog_level = "verbose"', "daemon.log_level", 'one of "debug", "info"'),
    ('[daemon]\nnode_id = "my box"', "daemon.node_id", "cannot be used in an MQTT topic"),
    ('[daemon]\nnode_id = "fleet"', "daemon.node_id", '"fleet" is reserved'),
    ('[daemon]\nstall_timeout = "0ms"', "daemon.stall_timeout", "from 0.01s to 600s, got 0s"),
    ("[daemon]\nstate_dir = 5", "daemon.state_dir", "must be a path"),
    ("[mqtt]\nport = 70000", "mqtt.port", "from 1 to 65535, got 70000"),
    ('[mqtt]\nport = "1883"', "mqtt.port", 'must be an integer from 1 to 65535, got "1883"'),
    ("[mqtt]\nqos = 3", "mqtt.qos", "from 0 to 2"),
    ('[mqtt]\nprotocol = "4"', "mqtt.protocol", 'one of "3.1.1", "5"'),
    ('[mqtt]\ntransport = "udp"', "mqtt.transport", 'one of "tcp", "websockets"'),
    ('[mqtt]\nhots = "broker"', "mqtt.hots", 'unknown key (did you mean "host"?)'),
    ('[mqtt]\ntls = "yes"', "mqtt.tls", 'must be true or false, got "yes"'),
    ('[mqtt]\nca_file = "labels.txt"', "mqtt.ca_file", "set tls = true"),
    ('[mqtt]\nusername = "u"\npassword_file = "nope"', "mqtt.password_file", "does not exist"),
    ('[mqtt]\nusername = "u"\npassword_file = "open-pw"', "mqtt.password_file", "chmod 600"),
    ('[mqtt]\npassword_file = "pw"', "mqtt.password_file", "username is empty"),
    ('[mqtt]\ntopic_prefix = "edge/+/x"', "mqtt.topic_prefix", "no wildcards"),
    ("[mqtt]\nbacklog_limit = -1", "mqtt.backlog_limit", "from 0 to 10000000, got -1"),
    ("[runtime]\ncpu_threads = 0", "runtime.cpu_threads", "from 1 to 64, got 0"),
    ('[runtime]\nruntime = "tensorflow"', "runtime.runtime", '"tflite_runtime"'),
    ('[devices]\nsecondary_ports = "deny"', "devices.secondary_ports", 'one of "warn", "reject"'),
    ('[devices]\nallow = "2-*"', "devices.allow", "must be an array of strings"),
    ("[devices]\nallow = [1, 2]", "devices.allow[0]", "must be a string"),
    ('[devices]\nperformance = "turbo"', "devices.performance", 'one of "std", "max"'),
    ("[devices]\nfirmware_debounce = -1", "devices.firmware_debounce", "from 0s to 60s"),
    ('[deamon]\nnode_id = "x"', "deamon", 'unknown section (did you mean "daemon"?)'),
    ("[models.cat]\npriority = 1", "models.cat.model", "is required"),
    ('[models.cat]\nmodel = "missing.tflite"', "models.cat.model", "missing.tflite does not exist"),
    ('[models.cat]\nmodel = "labels.d"', "models.cat.model", "is a folder, not a file"),
    (
        '[models."bad name"]\nmodel = "m.tflite"',
        'models."bad name"',
        'the model name "bad name" cannot be used in an MQTT topic',
    ),
    (
        '[models."a/b"]\nmodel = "m.tflite"',
        'models."a/b"',
        'the model name "a/b" cannot be used in an MQTT topic',
    ),
    ('[models.""]\nmodel = "m.tflite"', 'models.""', "a model needs a name; name the table"),
    ('[models.cat]\nmodel = "m.tflite"\npriority = "high"', "models.cat.priority", "from 0 to 100"),
    (
        '[models.cat]\nmodel = "m.tflite"\nreplicas = 0',
        "models.cat.replicas",
        "from 1 to 16, got 0",
    ),
    (
        '[models.cat]\nmodel = "m.tflite"\ndevice = "usb:abc"',
        "models.cat.device",
        "edgetpud devices",
    ),
    ('[models.cat]\nmodel = "m.tflite"\noverflow = "drop"', "models.cat.overflow", '"drop_oldest"'),
    (
        '[models.cat]\nmodel = "m_edgetpu.tflite"\ncpu_model = "m_edgetpu.tflite"',
        "models.cat.cpu_model",
        "cannot run on the CPU",
    ),
    (
        '[models.cat]\nmodel = "m_edgetpu.tflite"\ndevice = "cpu"',
        "models.cat.device",
        "set cpu_model",
    ),
    (
        '[models.cat]\nmodel = "m.tflite"\nlables = "labels.txt"',
        "models.cat.lables",
        '(did you mean "labels"?)',
    ),
    (
        '[models.cat]\nmodel = "m.tflite"\n[models.cat.source]\ntype = "ftp"',
        "models.cat.source.type",
        "no source plugin",
    ),
    ('[models.cat]\nmodel = "m.tflite"\nsource = "mqtt"', "models.cat.source", "must be a table"),
    ("models = 5", "models", "must be a table of [models.<name>] tables"),
    ('[fleet]\ngroup = "a b"', "fleet.group", "cannot be used in an MQTT topic"),
    ('[frigate]\nendpoint = "ipc://rel.sock"', "frigate.endpoint", "absolute socket path"),
    ('[frigate]\nendpoint = "http://x:1"', "frigate.endpoint", 'must be "ipc:///<socket'),
    ('[frigate]\nendpoint = "tcp://*:99999"', "frigate.endpoint", '"tcp://<address>:<port>"'),
    ('[frigate]\nendpoint = "tcp://*:5555"', "frigate.model", "name the [models.<name>] table"),
    (
        '[frigate]\nendpoint = "tcp://*:5555"\nmodel = "cats"\n[models.cat]\nmodel = "m.tflite"',
        "frigate.model",
        'names no [models.cats] table (did you mean "cat"?)',
    ),
    (
        '[frigate]\nendpoint = "tcp://*:5555"\nmodel = "cat"\n[models.cat]\nmodel = "m.tflite"',
        "frigate.model",
        'set models.cat.postprocess.type = "detect"',
    ),
    ('[frigate]\nsocket_mode = "rw"', "frigate.socket_mode", 'octal file mode such as "0660"'),
]


@pytest.mark.parametrize(("text", "path", "words"), BROKEN, ids=[b[1] for b in BROKEN])
def test_broken_config_names_the_key(
    files: Path, capsys: pytest.CaptureFixture[str], text: str, path: str, words: str
) -> None:
    code, out, err = check(write(files, text + "\n"), capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith(f"{path}: ")]
    assert lines, f"no line for {path} in:\n{err}"
    assert any(words in line for line in lines), f"{words!r} not in {lines}"
    assert out == ""


def test_frigate_section_serves_a_detect_model(files: Path) -> None:
    cfg = config.load(
        write(
            files,
            """
            [frigate]
            endpoint = "ipc:///run/edgetpud/frigate.sock"
            model = "doorcam"
            request_timeout = "250ms"
            [models.doorcam]
            model = "m.tflite"
            postprocess = { type = "detect" }
            """,
        )
    )
    assert cfg.frigate.endpoint == "ipc:///run/edgetpud/frigate.sock"
    assert (cfg.frigate.model, cfg.frigate.request_timeout) == ("doorcam", 0.25)
    assert config.load(write(files, "")).frigate.endpoint == ""  # off by default


def test_all_errors_reported_together(files: Path) -> None:
    path = write(
        files,
        """
        [mqtt]
        port = 0
        qos = 9
        [models.cat]
        model = "missing.tflite"
        replicas = 0
        """,
    )
    with pytest.raises(ConfigError) as info:
        config.load(path)
    paths = [issue.path for issue in info.value.issues]
    assert paths == ["mqtt.port", "mqtt.qos", "models.cat.model", "models.cat.replicas"]


def test_unreadable_configs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(tmp_path / "absent.toml", capsys)
    assert code == 2 and "no such file" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = = 1\n")
    code, _, err = check(bad, capsys)
    assert code == 2 and "not valid TOML" in err and "line 2" in err and "column" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_permission_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[daemon]\n")
    path.chmod(0)
    code, _, err = check(path, capsys)
    assert code == 2 and "permission denied" in err


def test_world_writable_config_is_refused(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(files, "[daemon]\n")
    path.chmod(0o666)
    code, _, err = check(path, capsys)
    assert code == 1 and "writable by every user" in err and "chmod o-w" in err


def test_configuration_reference_is_current() -> None:
    """docs/configuration.md is generated from the code; regenerate it when options change."""
    from edgetpud import config_docs

    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == config_docs.render(), (
        "docs/configuration.md is stale: run "
        "`.venv/bin/python -m edgetpud.config_docs > docs/configuration.md`"
    )
