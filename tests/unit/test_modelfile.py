"""Model inspection without a TFLite runtime: tensors, Edge TPU facts, unusable files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flatbuffers import flexbuffers
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetpud.errors import ModelError
from edgetpud.modelfile import inspect_model, parse_model
from tests.support.runtime import (
    Executable,
    Op,
    Tensor,
    add_model,
    edgetpu_model,
    edgetpu_options,
    package_bytes,
    tflite_bytes,
)

# What a user must never read in a model error: a Python class name, a bytes repr.
NOT_FOR_USERS = ("Error:", "b'", 'b"', "object at 0x", "struct.error")


def assert_plain(message: str) -> None:
    for leak in NOT_FOR_USERS:
        assert leak not in message, f"{leak!r} in {message!r}"


def write(tmp_path: Path, data: bytes, name: str = "model.tflite") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_plain_model_tensors(tmp_path: Path) -> None:
    info = inspect_model(write(tmp_path, add_model()))
    assert [t.name for t in info.inputs] == ["a", "b"]
    assert [t.name for t in info.outputs] == ["out"]
    assert info.inputs[0].shape == (1, 4)
    assert info.inputs[0].dtype == "float32"
    assert info.inputs[0].nbytes == 16
    assert not info.inputs[0].quantized
    assert not info.edgetpu
    assert info.caching_tokens == ()
    assert info.param_bytes == 0


def test_edgetpu_model_token_and_parameter_size(tmp_path: Path) -> None:
    data = edgetpu_model(Executable(type=2, token=0x1234), Executable(1, 0x1234, 8192))
    info = inspect_model(write(tmp_path, data))
    assert info.edgetpu
    assert info.caching_tokens == (0x1234,)
    assert info.param_bytes == 8192
    assert info.edgetpu_ops[0].executables == ("execution_only", "parameter_caching")
    spec = info.inputs[0]
    assert (spec.shape, spec.dtype, spec.scale, spec.zero_point) == (
        (1, 224, 224, 3),
        "uint8",
        0.0078125,
        128,
    )
    assert spec.nbytes == 224 * 224 * 3


@pytest.mark.parametrize("package_as", ["string", "blob"])
def test_the_compiled_package_is_read_as_a_string_or_a_blob(package_as: str) -> None:
    """edgetpu_compiler writes a (binary) string; Debian 12's flatbuffers 2.0.8 must read it too."""
    tensors = [Tensor("in", [1, 8]), Tensor("out", [1, 2])]
    options = edgetpu_options([Executable(1, 0xC0FFEE, 4096)], package_as=package_as)
    op = Op([0], [1], custom="edgetpu-custom-op", raw_options=options)
    info = parse_model(tflite_bytes(tensors, [op], [0], [1]))
    assert info.caching_tokens == (0xC0FFEE,)
    assert info.param_bytes == 4096


def test_a_package_of_another_type_is_reported() -> None:
    tensors = [Tensor("in", [1, 8]), Tensor("out", [1, 2])]
    options = edgetpu_options([Executable(1, 5, 64)], package_as="int")
    op = Op([0], [1], custom="edgetpu-custom-op", raw_options=options)
    with pytest.raises(ModelError, match=r"truncated or corrupt") as exc:
        parse_model(tflite_bytes(tensors, [op], [0], [1]))
    assert "compiled package is neither a blob nor a string" in str(exc.value)
    assert_plain(str(exc.value))


def test_a_package_without_its_marker_is_reported_in_words() -> None:
    package = bytearray(package_bytes([Executable(1, 5, 64)]))
    package[4:8] = b"XXXX"
    fbb = flexbuffers.Builder()
    with fbb.Map():
        fbb.Key("4")
        fbb.Blob(bytes(package))
    tensors = [Tensor("in", [1, 8]), Tensor("out", [1, 2])]
    op = Op([0], [1], custom="edgetpu-custom-op", raw_options=bytes(fbb.Finish()))
    with pytest.raises(ModelError) as exc:
        parse_model(tflite_bytes(tensors, [op], [0], [1]), Path("m_edgetpu.tflite"))
    message = str(exc.value)
    assert message.startswith("m_edgetpu.tflite is truncated or corrupt (")
    assert "lacks the DWN1 marker of an Edge TPU package" in message
    assert message.endswith(
        "copy the model file again and compare its size or checksum with the original"
    )
    assert_plain(message)


def test_every_edgetpu_op_counts(tmp_path: Path) -> None:
    tensors = [Tensor("in", [1, 8]), Tensor("mid", [1, 8]), Tensor("out", [1, 2])]
    ops = [
        Op([0], [1], custom="edgetpu-custom-op", executables=[Executable(1, 7, 100)]),
        Op([1], [2], custom="edgetpu-custom-op", executables=[Executable(1, 9, 50)]),
    ]
    info = parse_model(tflite_bytes(tensors, ops, [0], [2]))
    assert info.caching_tokens == (7, 9)
    assert info.param_bytes == 150


def test_other_custom_op_is_not_edgetpu() -> None:
    tensors = [Tensor("in", [1, 3]), Tensor("out", [1, 3])]
    info = parse_model(tflite_bytes(tensors, [Op([0], [1], custom="fake-op-double")], [0], [1]))
    assert not info.edgetpu


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"does not exist: check the path"):
        inspect_model(tmp_path / "nope.tflite")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"is a directory"):
        inspect_model(tmp_path)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 64, b"PK\x03\x04" + b"\x00" * 60, add_model()[:4] + b"ONNX" + add_model()[8:]],
    ids=["empty", "zeros", "zip", "wrong-identifier"],
)
def test_not_a_tflite_file(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(ModelError, match=r"is not a TensorFlow Lite model \(") as exc:
        inspect_model(write(tmp_path, data))
    message = str(exc.value)
    what = "the file is empty" if not data else "it lacks the TFL3 marker of a TensorFlow Lite file"
    assert f"({what}): give the .tflite file" in message
    assert_plain(message)


def test_every_truncation_is_reported(tmp_path: Path) -> None:
    data = add_model(weights=bytes(range(256)) * 4)
    for cut in range(8, len(data)):
        with pytest.raises(
            ModelError, match=r"truncated or corrupt: .*copy the model file again"
        ) as exc:
            parse_model(data[:cut], tmp_path / "cut.tflite")
        assert_plain(str(exc.value))


def test_a_cut_off_file_says_it_ends_early(tmp_path: Path) -> None:
    data = add_model(weights=bytes(range(256)) * 4)
    with pytest.raises(ModelError) as exc:
        parse_model(data[:300], tmp_path / "cut.tflite")
    assert str(exc.value) == (
        f"{tmp_path / 'cut.tflite'} is truncated or corrupt: it ends early (300 bytes), so the "
        "file was cut short or is not a .tflite model; copy the model file again and compare "
        "its size or checksum with the original"
    )


def test_truncated_edgetpu_package(tmp_path: Path) -> None:
    data = edgetpu_model(Executable(1, 5, 4096))
    for cut in range(8, len(data), 97):
        with pytest.raises(ModelError, match=r"truncated or corrupt"):
            parse_model(data[:cut])


def test_garbage_edgetpu_options() -> None:
    tensors = [Tensor("in", [1, 3]), Tensor("out", [1, 3])]
    op = Op([0], [1], custom="edgetpu-custom-op", raw_options=b"\x01\x02\x03garbage\x04")
    with pytest.raises(ModelError, match=r"truncated or corrupt"):
        parse_model(tflite_bytes(tensors, [op], [0], [1]))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_bytes_never_crash_the_parser(data: st.DataObject) -> None:
    model = bytearray(edgetpu_model(Executable(1, 5, 64)))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(8, len(model) - 1))
        model[index] = data.draw(st.integers(0, 255))
    try:
        info = parse_model(bytes(model))
    except ModelError as exc:
        assert_plain(str(exc))
        return
    assert isinstance(info.edgetpu, bool)


# The real Coral files (read only; no runtime needed).


def test_real_cpu_and_edgetpu_builds(models_dir: Path) -> None:
    cpu = inspect_model(models_dir / "mobilenet_v1_0.25_128_quant.tflite")
    tpu = inspect_model(models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    assert not cpu.edgetpu and cpu.caching_tokens == ()
    assert tpu.edgetpu and len(tpu.caching_tokens) == 1
    assert cpu.inputs[0].shape == tpu.inputs[0].shape == (1, 128, 128, 3)
    assert cpu.outputs[0].shape == (1, 1001)
    assert (cpu.inputs[0].dtype, cpu.inputs[0].scale, cpu.inputs[0].zero_point) == (
        "uint8",
        0.0078125,
        128,
    )
    # 0.25-width MobileNet v1 has about 0.47 M parameters, int8 on chip
    assert 300_000 < tpu.param_bytes < 1_000_000


def test_real_cocompiled_pair_shares_a_token(models_dir: Path) -> None:
    a = inspect_model(
        models_dir
        / "mobilenet_v1_0.25_128_quant_cocompiled_with_mobilenet_v1_0.5_160_quant_edgetpu.tflite"
    )
    b = inspect_model(
        models_dir
        / "mobilenet_v1_0.5_160_quant_cocompiled_with_mobilenet_v1_0.25_128_quant_edgetpu.tflite"
    )
    assert a.caching_tokens == b.caching_tokens
    assert len(a.caching_tokens) == 1 and a.caching_tokens[0] != 0
    assert a.param_bytes < b.param_bytes  # the 0.5-width model is the bigger one


def test_real_plain_pair_has_distinct_tokens(models_dir: Path) -> None:
    a = inspect_model(models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    b = inspect_model(models_dir / "mobilenet_v1_0.5_160_quant_edgetpu.tflite")
    assert a.caching_tokens and b.caching_tokens
    assert set(a.caching_tokens).isdisjoint(b.caching_tokens)


def test_real_invoking_error_model_is_not_edgetpu(models_dir: Path) -> None:
    info = inspect_model(models_dir / "model_invoking_error.tflite")
    assert not info.edgetpu
    assert info.inputs[0].shape == (1, 3) and info.inputs[0].dtype == "uint8"


def test_real_truncated_model(models_dir: Path, tmp_path: Path) -> None:
    data = (models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite").read_bytes()
    path = write(tmp_path, data[: len(data) // 2], "half_edgetpu.tflite")
    with pytest.raises(ModelError, match=r"half_edgetpu.tflite is truncated or corrupt"):
        inspect_model(path)


def test_a_fifo_as_model_is_named_and_never_opened(tmp_path: Path) -> None:
    """read_bytes() on a named pipe blocks until someone writes: the daemon would hang."""
    fifo = tmp_path / "m.tflite"
    os.mkfifo(fifo)
    with pytest.raises(ModelError, match=r"is a named pipe \(FIFO\), not a file"):
        inspect_model(fifo)
