"""Test helpers for the runtime area: tiny .tflite files and a stand-in delegate library.

`tflite_bytes` is the tests' one TFLite writer: flatbuffers with nothing but the
`flatbuffers` package (Debian's python3-flatbuffers is enough, so unit tests stay pure),
with constant tensors (`Tensor.data`), builtin and custom operators (custom options as
raw bytes), and `edgetpu-custom-op` operators carrying a compiled package
(executable.fbs, DWN1) with a chosen parameter caching token and parameter size, the way
edgetpu_compiler writes them. tests/support/ssd_model.py builds its detection models
with it.

`build_stub_delegate` compiles ../shared/reference/stub_delegate.c (the external
delegate ABI, refusing devices on request) for runtime tests that need a
delegate library but not the project's full fake libedgetpu.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import flatbuffers
from flatbuffers import flexbuffers

TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int64": 4, "int8": 9}
BUILTIN_ADD = 0
BUILTIN_CUSTOM = 32


@dataclass
class Tensor:
    name: str
    shape: Sequence[int]
    dtype: str = "uint8"
    quant: tuple[float, int] | None = None
    data: bytes | None = None  # a constant tensor's contents (its own buffer)


@dataclass
class Executable:
    """One Edge TPU executable: type 0 stand-alone, 1 parameter-caching, 2 execution-only."""

    type: int = 1
    token: int = 0
    param_bytes: int = 0


@dataclass
class Op:
    """A builtin op (code) or a custom op (name); Edge TPU ops carry executables."""

    inputs: Sequence[int]
    outputs: Sequence[int]
    builtin: int = BUILTIN_ADD
    custom: str = ""
    executables: Sequence[Executable] = field(default_factory=list)
    raw_options: bytes | None = None


def _vector(b: flatbuffers.Builder, items: Sequence[int | float], kind: str) -> int:
    size = {"i": 4, "I": 4, "f": 4, "q": 8, "B": 1, "off": 4}[kind]
    b.StartVector(size, len(items), size)
    prepend = {
        "i": b.PrependInt32,
        "I": b.PrependUint32,
        "f": b.PrependFloat32,
        "q": b.PrependInt64,
        "B": b.PrependUint8,
        "off": b.PrependUOffsetTRelative,
    }[kind]
    for item in reversed(items):
        prepend(item)
    return int(b.EndVector())


def _bytes_vector(b: flatbuffers.Builder, data: bytes) -> int:
    return int(b.CreateByteVector(data))


def _data_vector(b: flatbuffers.Builder, data: bytes) -> int:
    """A buffer's bytes aligned to 16, as TFLite's converter writes constant tensors."""
    b.StartVector(1, len(data), 16)
    b.head -= len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    return int(b.EndVector())


def package_bytes(executables: Sequence[Executable]) -> bytes:
    """A libedgetpu `Package` (file id DWN1) wrapping a MultiExecutable."""
    serialized = []
    for ex in executables:
        b = flatbuffers.Builder(256)
        params = _bytes_vector(b, bytes(ex.param_bytes)) if ex.param_bytes else 0
        b.StartObject(15)
        if params:
            b.PrependUOffsetTRelativeSlot(6, params, 0)
        b.PrependInt16Slot(13, ex.type, 0)
        b.PrependUint64Slot(14, ex.token, 0)
        b.Finish(b.EndObject())
        serialized.append(bytes(b.Output()))
    b = flatbuffers.Builder(256)
    strings = [b.CreateString(s) for s in serialized]
    vec = _vector(b, strings, "off")
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, vec, 0)
    b.Finish(b.EndObject())
    multi = bytes(b.Output())
    b = flatbuffers.Builder(256)
    nested = _bytes_vector(b, multi)
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(1, nested, 0)
    b.Finish(b.EndObject(), file_identifier=b"DWN1")
    return bytes(b.Output())


def edgetpu_options(executables: Sequence[Executable], package_as: str = "string") -> bytes:
    """The custom options of an edgetpu-custom-op: a FlexBuffer map, key "4" = the package.

    edgetpu_compiler stores the package as a FlexBuffer string (binary, not UTF-8), as in every
    model in ../shared/models; "blob" and "int" write the other forms a parser may meet.
    """
    fbb = flexbuffers.Builder()
    package = package_bytes(executables)
    with fbb.Map():
        fbb.Key("1")
        fbb.Int(1)
        fbb.Key("4")
        if package_as == "string":  # Builder.String takes str only: write the bytes as one
            fbb._WriteBlob(package, append_zero=True, type_=flexbuffers.Type.STRING)
        elif package_as == "blob":
            fbb.Blob(package)
        else:
            fbb.Int(len(package))
    return bytes(fbb.Finish())


def tflite_bytes(
    tensors: Sequence[Tensor],
    ops: Sequence[Op],
    inputs: Sequence[int],
    outputs: Sequence[int],
    *,
    identifier: bytes = b"TFL3",
    weights: bytes = b"",
    description: str = "edgetpud test model",
) -> bytes:
    """A TFLite model flatbuffer. `weights` becomes a constant buffer (to give the file bulk);
    each tensor with `data` gets a buffer of its own."""
    b = flatbuffers.Builder(1024)
    buffers = []
    constants = [t.data for t in tensors if t.data is not None]
    for i, data in enumerate((b"", weights, *constants)):
        vec = (_bytes_vector if i < 2 else _data_vector)(b, data) if data else 0
        b.StartObject(1)
        if vec:
            b.PrependUOffsetTRelativeSlot(0, vec, 0)
        buffers.append(b.EndObject())
    tensor_offs = []
    next_buffer = 2
    for t in tensors:
        name = b.CreateString(t.name)
        shape = _vector(b, list(t.shape), "i")
        quant = 0
        if t.quant is not None:
            scale = _vector(b, [t.quant[0]], "f")
            zero = _vector(b, [t.quant[1]], "q")
            b.StartObject(7)
            b.PrependUOffsetTRelativeSlot(2, scale, 0)
            b.PrependUOffsetTRelativeSlot(3, zero, 0)
            quant = b.EndObject()
        b.StartObject(5)
        b.PrependUOffsetTRelativeSlot(0, shape, 0)
        b.PrependInt8Slot(1, TYPES[t.dtype], 0)
        if t.data is not None:
            b.PrependUint32Slot(2, next_buffer, 0)
            next_buffer += 1
        b.PrependUOffsetTRelativeSlot(3, name, 0)
        if quant:
            b.PrependUOffsetTRelativeSlot(4, quant, 0)
        tensor_offs.append(b.EndObject())
    codes: list[tuple[int, str]] = []
    op_offs = []
    for op in ops:
        key = (BUILTIN_CUSTOM, op.custom) if op.custom else (op.builtin, "")
        if key not in codes:
            codes.append(key)
        options = op.raw_options
        if options is None and op.executables:
            options = edgetpu_options(op.executables)
        opts = _bytes_vector(b, options) if options else 0
        ins = _vector(b, list(op.inputs), "i")
        outs = _vector(b, list(op.outputs), "i")
        b.StartObject(7)
        b.PrependUint32Slot(0, codes.index(key), 0)
        b.PrependUOffsetTRelativeSlot(1, ins, 0)
        b.PrependUOffsetTRelativeSlot(2, outs, 0)
        if opts:
            b.PrependUOffsetTRelativeSlot(5, opts, 0)
        op_offs.append(b.EndObject())
    tensors_vec = _vector(b, tensor_offs, "off")
    inputs_vec = _vector(b, list(inputs), "i")
    outputs_vec = _vector(b, list(outputs), "i")
    ops_vec = _vector(b, op_offs, "off")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tensors_vec, 0)
    b.PrependUOffsetTRelativeSlot(1, inputs_vec, 0)
    b.PrependUOffsetTRelativeSlot(2, outputs_vec, 0)
    b.PrependUOffsetTRelativeSlot(3, ops_vec, 0)
    subgraph = b.EndObject()
    code_offs = []
    for builtin, custom in codes:
        name = b.CreateString(custom) if custom else 0
        b.StartObject(4)
        b.PrependInt8Slot(0, min(builtin, 127), 0)
        if name:
            b.PrependUOffsetTRelativeSlot(1, name, 0)
        b.PrependInt32Slot(2, 1, 0)
        b.PrependInt32Slot(3, builtin, 0)
        code_offs.append(b.EndObject())
    codes_vec = _vector(b, code_offs, "off")
    subgraphs_vec = _vector(b, [subgraph], "off")
    buffers_vec = _vector(b, buffers, "off")
    description_off = b.CreateString(description)
    b.StartObject(5)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, codes_vec, 0)
    b.PrependUOffsetTRelativeSlot(2, subgraphs_vec, 0)
    b.PrependUOffsetTRelativeSlot(3, description_off, 0)
    b.PrependUOffsetTRelativeSlot(4, buffers_vec, 0)
    b.Finish(b.EndObject(), file_identifier=identifier)
    return bytes(b.Output())


def add_model(weights: bytes = b"") -> bytes:
    """float32 out = a + b, shape [1, 4]."""
    tensors = [Tensor(n, [1, 4], "float32") for n in ("a", "b", "out")]
    return tflite_bytes(tensors, [Op([0, 1], [2])], [0, 1], [2], weights=weights)


def edgetpu_model(*executables: Executable, ops: int = 1) -> bytes:
    """A uint8 [1, 224, 224, 3] → [1, 1001] model made of `ops` edgetpu-custom-ops."""
    tensors = [
        Tensor("input", [1, 224, 224, 3], "uint8", (0.0078125, 128)),
        Tensor("scores", [1, 1001], "uint8", (0.00390625, 0)),
    ]
    custom = [Op([0], [1], custom="edgetpu-custom-op", executables=executables)] * ops
    return tflite_bytes(tensors, custom, [0], [1])


def build_stub_delegate(out_dir: Path) -> Path:
    """Compile the reference stub delegate (claims no nodes; STUB_FAIL=usb:1 refuses a device)."""
    source = Path(__file__).resolve().parents[3] / "shared" / "reference" / "stub_delegate.c"
    compiler = shutil.which("gcc") or shutil.which("cc")
    if not source.is_file() or compiler is None:
        raise FileNotFoundError(f"need {source} and a C compiler to build the stub delegate")
    library = out_dir / "libstub_delegate.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source)],
        check=True,
        capture_output=True,
    )
    return library
