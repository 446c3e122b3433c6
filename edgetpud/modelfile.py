"""Read what a .tflite model needs and holds, without the TFLite runtime.

Parses the model's flatbuffer directly (the `flatbuffers` package, with hand-written
accessors for the few fields of the TFLite schema used here), so the placement engine,
`check-config` and the Debian package's unit tests can inspect a model on a machine
with no TFLite runtime at all.

For Edge TPU builds it also reads each `edgetpu-custom-op`'s compiled package
(libedgetpu's `executable.fbs`, file id DWN1) for the parameter caching token and
the on-chip parameter size: models compiled together share one token and can stay
cached on one Edge TPU together.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flatbuffers import flexbuffers
from flatbuffers.table import Table

from edgetpud import pathcheck
from edgetpud.errors import ModelError

log = logging.getLogger(__name__)

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
TFLITE_IDENTIFIER = b"TFL3"
PACKAGE_IDENTIFIER = b"DWN1"
MAX_MODEL_BYTES = 2**31 - 1  # a flatbuffer cannot be larger

# TFLite schema.fbs `TensorType` → (numpy-style name, bytes per element).
_TENSOR_TYPES: dict[int, tuple[str, int]] = {
    0: ("float32", 4),
    1: ("float16", 2),
    2: ("int32", 4),
    3: ("uint8", 1),
    4: ("int64", 8),
    5: ("string", 1),
    6: ("bool", 1),
    7: ("int16", 2),
    8: ("complex64", 8),
    9: ("int8", 1),
    10: ("float64", 8),
    11: ("complex128", 16),
    12: ("uint64", 8),
    13: ("resource", 1),
    14: ("variant", 1),
    15: ("uint32", 4),
    16: ("uint16", 2),
    17: ("int4", 1),
    18: ("bfloat16", 2),
}

# libedgetpu executable.fbs `ExecutableType`.
EXECUTABLE_TYPES = {0: "stand_alone", 1: "parameter_caching", 2: "execution_only"}

# Field indices (vtable slot = 4 + 2 * index) of the schema fields read here.
_MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS, _MODEL_BUFFERS = 1, 2, 4
_OPCODE_DEPRECATED_BUILTIN, _OPCODE_CUSTOM_CODE, _OPCODE_BUILTIN = 0, 1, 3
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS = 0, 1, 2, 3
_TENSOR_SHAPE, _TENSOR_TYPE, _TENSOR_NAME, _TENSOR_QUANTIZATION = 0, 1, 3, 4
_QUANT_SCALE, _QUANT_ZERO_POINT = 2, 3
_OPERATOR_OPCODE_INDEX, _OPERATOR_CUSTOM_OPTIONS = 0, 5
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2
_PACKAGE_MULTI_EXECUTABLE = 1
_MULTI_EXECUTABLES = 0
_EXECUTABLE_PARAMETERS, _EXECUTABLE_TYPE, _EXECUTABLE_TOKEN = 6, 13, 14
_BUILTIN_CUSTOM = 32
_PACKAGE_KEY = "4"  # key of the compiled package in the custom op's FlexBuffer options


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: what a caller must feed or will get back."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "uint8", "int8", "float32", ...
    scale: float = 0.0  # 0.0: not quantized
    zero_point: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of one tensor of this shape (dynamic dimensions, -1, count as 1)."""
        size = _TENSOR_ITEMSIZE.get(self.dtype, 1)
        return size * math.prod(max(d, 1) for d in self.shape)

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0


_TENSOR_ITEMSIZE = {name: size for name, size in _TENSOR_TYPES.values()}


@dataclass(frozen=True)
class EdgeTpuOp:
    """One `edgetpu-custom-op`: a subgraph compiled for the Edge TPU."""

    operator: int  # index in the main subgraph's operator list
    caching_token: int  # 0: the compiler gave none
    param_bytes: int  # parameters cached in the Edge TPU's on-chip memory
    executables: tuple[str, ...]  # "stand_alone" | "parameter_caching" | "execution_only"


@dataclass(frozen=True)
class ModelInfo:
    """What `inspect_model` learned about one .tflite file."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    edgetpu: bool  # any operator is an edgetpu-custom-op
    caching_tokens: tuple[int, ...]  # distinct non-zero tokens, in operator order
    param_bytes: int  # total on-chip parameter bytes over all Edge TPU ops
    edgetpu_ops: tuple[EdgeTpuOp, ...] = ()
    size: int = 0  # file size in bytes


def inspect_model(path: Path) -> ModelInfo:
    """Read a .tflite file's inputs, outputs and Edge TPU facts; raise ModelError if unusable."""
    path = Path(path)
    try:
        data = pathcheck.read_bounded(path, MAX_MODEL_BYTES)
    except pathcheck.NotARegularFile as exc:
        if "folder" in str(exc):
            raise ModelError(
                f"model path {path} is a directory: name the .tflite file in it"
            ) from None
        raise ModelError(f"model path {path} {exc}: name the .tflite file") from None
    except pathcheck.TooLarge as exc:
        raise ModelError(
            f"model file {path} is {exc.size:,} bytes, over the {MAX_MODEL_BYTES:,}-byte "
            "limit for a TensorFlow Lite model (flatbuffers stop at 2 GiB)"
        ) from None
    except FileNotFoundError:
        raise ModelError(
            f"model file {path} does not exist: check the path (the package ships no "
            "models; the example config expects them in /srv/edgetpud/models)"
        ) from None
    except IsADirectoryError:
        raise ModelError(f"model path {path} is a directory: name the .tflite file in it") from None
    except OSError as exc:
        raise ModelError(
            f"cannot read model file {path}: {exc.strerror or exc}; "
            "check its permissions (the daemon runs as user edgetpud)"
        ) from None
    return parse_model(data, path)


class _Malformed(ValueError):
    """A part of the model the parser checked and found wrong; its text is a sentence for users."""


_COPY_AGAIN = "copy the model file again and compare its size or checksum with the original"


def parse_model(data: bytes, path: Path = Path("<memory>")) -> ModelInfo:
    """Like `inspect_model`, for a model already in memory."""
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        what = (
            "the file is empty"
            if not data
            else "it lacks the TFL3 marker of a TensorFlow Lite file"
        )
        raise ModelError(
            f"{path} is not a TensorFlow Lite model ({what}): "
            "give the .tflite file (convert other formats with the TFLite converter, "
            "then edgetpu_compiler for an Edge TPU build)"
        )
    try:
        return _parse(data, path)
    except _Malformed as exc:
        raise ModelError(
            f"{path} is truncated or corrupt ({len(data)} bytes): {exc}; {_COPY_AGAIN}"
        ) from None
    except (struct.error, IndexError):
        # Python's own text ("unpack_from requires a buffer of at least…") goes to the debug
        # log, for a bug report; the user is told what it means.
        log.debug("parsing %s failed", path, exc_info=True)
        raise ModelError(
            f"{path} is truncated or corrupt: it ends early ({len(data)} bytes), so the file "
            f"was cut short or is not a .tflite model; {_COPY_AGAIN}"
        ) from None
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        log.debug("parsing %s failed", path, exc_info=True)
        raise ModelError(
            f"{path} is truncated or corrupt: its contents ({len(data)} bytes) do not read as a "
            f"TensorFlow Lite model; {_COPY_AGAIN}"
        ) from None


class _Fb:
    """A flatbuffer table with bounds-checked accessors for the field kinds used here."""

    def __init__(self, buf: bytes | memoryview, pos: int) -> None:
        if not 0 <= pos < len(buf):
            raise IndexError(f"table at {pos} lies outside the {len(buf)}-byte buffer")
        self.buf = buf
        self.t = Table(buf, pos)

    @classmethod
    def root(cls, buf: bytes | memoryview, start: int = 0) -> _Fb:
        (offset,) = struct.unpack_from("<I", buf, start)
        return cls(buf, start + offset)

    def _off(self, field: int) -> int:
        off: int = self.t.Offset(4 + 2 * field)
        return off

    def scalar(self, field: int, fmt: str, default: int | float = 0) -> Any:
        off = self._off(field)
        if not off:
            return default
        return struct.unpack_from("<" + fmt, self.buf, self.t.Pos + off)[0]

    def string(self, field: int) -> str:
        off = self._off(field)
        if not off:
            return ""
        raw: bytes = self.t.String(self.t.Pos + off)
        return raw.decode("utf-8")

    def table(self, field: int) -> _Fb | None:
        off = self._off(field)
        if not off:
            return None
        pos: int = self.t.Indirect(self.t.Pos + off)
        return _Fb(self.buf, pos)

    def _vector(self, field: int, elem_size: int) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) if absent. Checks it lies in the buffer."""
        off = self._off(field)
        if not off:
            return 0, 0
        start: int = self.t.Vector(off)
        length: int = self.t.VectorLen(off)
        if start + length * elem_size > len(self.buf):
            raise IndexError(f"vector of {length} items at {start} runs past the end of the data")
        return start, length

    def numbers(self, field: int, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize("<" + fmt)
        start, length = self._vector(field, size)
        return struct.unpack_from(f"<{length}{fmt}", self.buf, start) if length else ()

    def blob(self, field: int) -> memoryview:
        start, length = self._vector(field, 1)
        return memoryview(self.buf)[start : start + length]

    def blob_len(self, field: int) -> int:
        return self._vector(field, 1)[1]

    def tables(self, field: int) -> list[_Fb]:
        start, length = self._vector(field, 4)
        return [_Fb(self.buf, self.t.Indirect(start + 4 * i)) for i in range(length)]

    def strings(self, field: int) -> list[memoryview]:
        """A vector of strings (or nested flatbuffers stored as strings), without copying."""
        start, length = self._vector(field, 4)
        view = memoryview(self.buf)
        out = []
        for i in range(length):
            at: int = self.t.Indirect(start + 4 * i)
            (size,) = struct.unpack_from("<I", self.buf, at)
            if at + 4 + size > len(self.buf):
                raise IndexError(f"string of {size} bytes at {at} runs past the end of the data")
            out.append(view[at + 4 : at + 4 + size])
        return out


def _parse(data: bytes, path: Path) -> ModelInfo:
    model = _Fb.root(data)
    for buffer in model.tables(_MODEL_BUFFERS):
        buffer.blob_len(_BUFFER_DATA)  # bounds-checked: a cut-off file fails here
        offset = buffer.scalar(_BUFFER_OFFSET, "Q")
        size = buffer.scalar(_BUFFER_SIZE, "Q")
        if offset > 1 and offset + size > len(data):
            raise IndexError(f"buffer at {offset}+{size} runs past the end of the data")
    codes = [_opcode_name(code) for code in model.tables(_MODEL_OPERATOR_CODES)]
    subgraphs = model.tables(_MODEL_SUBGRAPHS)
    if not subgraphs:
        raise _Malformed("the model has no subgraph")
    main = subgraphs[0]
    tensors = main.tables(_SUBGRAPH_TENSORS)
    inputs = tuple(_tensor(tensors[i]) for i in main.numbers(_SUBGRAPH_INPUTS, "i"))
    outputs = tuple(_tensor(tensors[i]) for i in main.numbers(_SUBGRAPH_OUTPUTS, "i"))

    edgetpu = False
    ops: list[EdgeTpuOp] = []
    for graph in subgraphs:
        for index, op in enumerate(graph.tables(_SUBGRAPH_OPERATORS)):
            if codes[op.scalar(_OPERATOR_OPCODE_INDEX, "I")] != EDGETPU_CUSTOM_OP:
                continue
            edgetpu = True
            tpu_op = _edgetpu_op(index, op.blob(_OPERATOR_CUSTOM_OPTIONS), path)
            if tpu_op is not None:
                ops.append(tpu_op)
    tokens: list[int] = []
    for tpu_op in ops:
        if tpu_op.caching_token and tpu_op.caching_token not in tokens:
            tokens.append(tpu_op.caching_token)
    return ModelInfo(
        path=path,
        inputs=inputs,
        outputs=outputs,
        edgetpu=edgetpu,
        caching_tokens=tuple(tokens),
        param_bytes=sum(op.param_bytes for op in ops),
        edgetpu_ops=tuple(ops),
        size=len(data),
    )


def _opcode_name(code: _Fb) -> str:
    builtin = max(code.scalar(_OPCODE_DEPRECATED_BUILTIN, "b"), code.scalar(_OPCODE_BUILTIN, "i"))
    if builtin == _BUILTIN_CUSTOM:
        return code.string(_OPCODE_CUSTOM_CODE)
    return f"builtin:{builtin}"


def _tensor(tensor: _Fb) -> TensorSpec:
    type_code = tensor.scalar(_TENSOR_TYPE, "b")
    dtype = _TENSOR_TYPES.get(type_code, (f"type{type_code}", 1))[0]
    scale, zero_point = 0.0, 0
    quant = tensor.table(_TENSOR_QUANTIZATION)
    if quant is not None:
        scales = quant.numbers(_QUANT_SCALE, "f")
        zero_points = quant.numbers(_QUANT_ZERO_POINT, "q")
        scale = float(scales[0]) if scales else 0.0
        zero_point = int(zero_points[0]) if zero_points else 0
    return TensorSpec(
        name=tensor.string(_TENSOR_NAME),
        shape=tuple(int(d) for d in tensor.numbers(_TENSOR_SHAPE, "i")),
        dtype=dtype,
        scale=scale,
        zero_point=zero_point,
    )


def _blob_or_string(value: Any, index: int) -> bytes:
    """The bytes of a FlexBuffer blob or string: edgetpu_compiler stores the package as a string.

    flatbuffers 2.0.8 (Debian 12) has no `Ref.AsStringBytes` and its `AsString` decodes UTF-8,
    which a binary package is not; `String(...).Bytes` is what later releases'
    `AsStringBytes` returns, and exists in both.
    """
    if value.IsBlob:
        return bytes(value.AsBlob)
    if not value.IsString:
        raise _Malformed(f"Edge TPU op {index}'s compiled package is neither a blob nor a string")
    as_bytes = getattr(value, "AsStringBytes", None)
    if as_bytes is None:
        as_bytes = flexbuffers.String(value._Indirect(), value._byte_width).Bytes
    return bytes(as_bytes)


def _edgetpu_op(index: int, options: memoryview, path: Path) -> EdgeTpuOp | None:
    """Read the token and parameter size from one custom op's compiled package."""
    if not options:
        log.warning("%s: Edge TPU op %d carries no compiled package", path, index)
        return None
    root = flexbuffers.GetRoot(bytes(options))  # flexbuffers needs bytes (it calls .find)
    if not root.IsMap:
        raise _Malformed(f"Edge TPU op {index}'s options are not a FlexBuffer map")
    package_map = root.AsMap
    keys = [key.AsKey for key in package_map.Keys]
    if _PACKAGE_KEY not in keys:
        raise _Malformed(f"Edge TPU op {index}'s options lack the compiled package")
    package = _blob_or_string(package_map[_PACKAGE_KEY], index)
    if len(package) < 8 or bytes(package[4:8]) != PACKAGE_IDENTIFIER:
        raise _Malformed(
            f"Edge TPU op {index}'s compiled package lacks the DWN1 marker of an Edge TPU package"
        )
    multi_bytes = _Fb.root(package).blob(_PACKAGE_MULTI_EXECUTABLE)
    token = 0
    param_bytes = 0
    kinds: list[str] = []
    for serialized in _Fb.root(multi_bytes).strings(_MULTI_EXECUTABLES):
        executable = _Fb.root(serialized)
        kind = executable.scalar(_EXECUTABLE_TYPE, "b")
        kinds.append(EXECUTABLE_TYPES.get(kind, f"type{kind}"))
        token = token or executable.scalar(_EXECUTABLE_TOKEN, "Q")
        if kind != 2:  # execution-only executables carry no parameters of their own
            param_bytes = max(param_bytes, executable.blob_len(_EXECUTABLE_PARAMETERS))
    return EdgeTpuOp(index, token, param_bytes, tuple(kinds))
