"""Write the demo model: a real TFLite classifier of an image's dominant colour.

No training, no download: the graph averages the image (AVERAGE_POOL_2D over the
whole 32x32 input) and scores each named colour by closeness to the average
(FULLY_CONNECTED with weights 2c and bias -|c|^2, so the argmax is the nearest
colour), then SOFTMAX. A person can check every answer by looking at the picture.

    python demo/colour_model.py OUTDIR   → OUTDIR/colours.tflite, OUTDIR/colours.txt
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import tflite as T

SIZE = 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 30),
    "purple": (130, 50, 170),
    "cyan": (40, 200, 220),
    "magenta": (220, 40, 180),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "black": (15, 15, 15),
    "brown": (120, 75, 40),
}
TENSOR_TYPES = {np.float32: T.TensorType.FLOAT32, np.uint8: T.TensorType.UINT8}


def _vector(b: Any, start: Any, items: list[Any], prepend: Any) -> Any:
    start(b, len(items))
    for item in reversed(items):
        prepend(item)
    return b.EndVector()


def _tensor(
    b: Any, index: int, name: str, shape: list[int], dtype: Any, *, quant: Any = None
) -> Any:
    name_off = b.CreateString(name)
    shape_off = _vector(b, T.TensorStartShapeVector, shape, b.PrependInt32)
    q = None
    if quant is not None:
        sc = _vector(b, T.QuantizationParametersStartScaleVector, [quant[0]], b.PrependFloat32)
        zp = _vector(b, T.QuantizationParametersStartZeroPointVector, [quant[1]], b.PrependInt64)
        T.QuantizationParametersStart(b)
        T.QuantizationParametersAddScale(b, sc)
        T.QuantizationParametersAddZeroPoint(b, zp)
        q = T.QuantizationParametersEnd(b)
    T.TensorStart(b)
    T.TensorAddShape(b, shape_off)
    T.TensorAddType(b, TENSOR_TYPES[dtype])
    T.TensorAddBuffer(b, index + 1)
    T.TensorAddName(b, name_off)
    if q is not None:
        T.TensorAddQuantization(b, q)
    return T.TensorEnd(b)


def build() -> bytes:
    centres = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0
    weights = (2.0 * centres).astype(np.float32)  # [K, 3]
    bias = (-(centres**2).sum(axis=1)).astype(np.float32)  # [K]
    k = len(COLOURS)
    b = flatbuffers.Builder(4096)
    # buffers: 0 is the empty sentinel, then one per tensor (constants carry data)
    data: list[np.ndarray | None] = [None, None, None, None, weights, bias, None, None]
    buffers = []
    for arr in data:
        raw_off = None
        if arr is not None:
            raw = np.ascontiguousarray(arr).tobytes()
            b.StartVector(1, len(raw), 16)
            b.head -= len(raw)
            b.Bytes[b.head : b.head + len(raw)] = raw
            raw_off = b.EndVector()
        T.BufferStart(b)
        if raw_off is not None:
            T.BufferAddData(b, raw_off)
        buffers.append(T.BufferEnd(b))
    tensors = [
        _tensor(b, 0, "image", [1, SIZE, SIZE, 3], np.uint8, quant=(1 / 255, 0)),
        _tensor(b, 1, "image_float", [1, SIZE, SIZE, 3], np.float32),
        _tensor(b, 2, "mean_colour", [1, 1, 1, 3], np.float32),
        _tensor(b, 3, "weights", [k, 3], np.float32),
        _tensor(b, 4, "bias", [k], np.float32),
        _tensor(b, 5, "closeness", [1, k], np.float32),
        _tensor(b, 6, "scores", [1, k], np.float32),
    ]
    codes = [
        T.BuiltinOperator.DEQUANTIZE,
        T.BuiltinOperator.AVERAGE_POOL_2D,
        T.BuiltinOperator.FULLY_CONNECTED,
        T.BuiltinOperator.SOFTMAX,
    ]

    def pool_options() -> Any:
        T.Pool2DOptionsStart(b)
        T.Pool2DOptionsAddPadding(b, T.Padding.VALID)
        T.Pool2DOptionsAddStrideW(b, SIZE)
        T.Pool2DOptionsAddStrideH(b, SIZE)
        T.Pool2DOptionsAddFilterWidth(b, SIZE)
        T.Pool2DOptionsAddFilterHeight(b, SIZE)
        return T.Pool2DOptionsEnd(b)

    def fc_options() -> Any:
        T.FullyConnectedOptionsStart(b)
        return T.FullyConnectedOptionsEnd(b)

    def softmax_options() -> Any:
        T.SoftmaxOptionsStart(b)
        T.SoftmaxOptionsAddBeta(b, 40.0)
        return T.SoftmaxOptionsEnd(b)

    ops_spec = [
        (0, None, None, [0], [1]),
        (1, T.BuiltinOptions.Pool2DOptions, pool_options, [1], [2]),
        (2, T.BuiltinOptions.FullyConnectedOptions, fc_options, [2, 3, 4], [5]),
        (3, T.BuiltinOptions.SoftmaxOptions, softmax_options, [5], [6]),
    ]
    operators = []
    for code, otype, ofn, ins, outs in ops_spec:
        opt = ofn() if ofn else None
        iv = _vector(b, T.OperatorStartInputsVector, ins, b.PrependInt32)
        ov = _vector(b, T.OperatorStartOutputsVector, outs, b.PrependInt32)
        T.OperatorStart(b)
        T.OperatorAddOpcodeIndex(b, code)
        T.OperatorAddInputs(b, iv)
        T.OperatorAddOutputs(b, ov)
        if opt is not None:
            T.OperatorAddBuiltinOptionsType(b, otype)
            T.OperatorAddBuiltinOptions(b, opt)
        operators.append(T.OperatorEnd(b))
    sg_name = b.CreateString("main")
    tv = _vector(b, T.SubGraphStartTensorsVector, tensors, b.PrependUOffsetTRelative)
    iv = _vector(b, T.SubGraphStartInputsVector, [0], b.PrependInt32)
    ov = _vector(b, T.SubGraphStartOutputsVector, [6], b.PrependInt32)
    opv = _vector(b, T.SubGraphStartOperatorsVector, operators, b.PrependUOffsetTRelative)
    T.SubGraphStart(b)
    T.SubGraphAddTensors(b, tv)
    T.SubGraphAddInputs(b, iv)
    T.SubGraphAddOutputs(b, ov)
    T.SubGraphAddOperators(b, opv)
    T.SubGraphAddName(b, sg_name)
    subgraph = T.SubGraphEnd(b)
    opcodes = []
    for c in codes:
        T.OperatorCodeStart(b)
        T.OperatorCodeAddDeprecatedBuiltinCode(b, c)
        T.OperatorCodeAddBuiltinCode(b, c)
        T.OperatorCodeAddVersion(b, 1)
        opcodes.append(T.OperatorCodeEnd(b))
    ocv = _vector(b, T.ModelStartOperatorCodesVector, opcodes, b.PrependUOffsetTRelative)
    sgv = _vector(b, T.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    bv = _vector(b, T.ModelStartBuffersVector, buffers, b.PrependUOffsetTRelative)
    desc = b.CreateString("edgetpud demo: dominant colour")
    T.ModelStart(b)
    T.ModelAddVersion(b, 3)
    T.ModelAddOperatorCodes(b, ocv)
    T.ModelAddSubgraphs(b, sgv)
    T.ModelAddDescription(b, desc)
    T.ModelAddBuffers(b, bv)
    b.Finish(T.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def write(folder: Path) -> tuple[Path, Path]:
    """Write colours.tflite and colours.txt into `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "colours.tflite"
    labels = folder / "colours.txt"
    model.write_bytes(build())
    labels.write_text("".join(f"{i} {name}\n" for i, name in enumerate(COLOURS)))
    return model, labels


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for path in write(out):
        print(path)
