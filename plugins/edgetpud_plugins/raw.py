"""`raw`: the output tensors themselves, as lists when small, else base64."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgetpud.messages import Request
from edgetpud.plugins import Postprocessor
from edgetpud.preprocess import dequantize
from edgetpud.schema import option


@dataclass(frozen=True)
class RawConfig:
    max_list: int = option(
        "Tensors with at most this many elements are sent as JSON lists; larger ones as base64.",
        256,
        minimum=0,
        maximum=1_000_000,
    )
    dequantize: bool = option(
        "Send real values (float32) instead of the quantized integers.", False
    )


class Raw(Postprocessor):
    """Output: [{"name", "shape", "dtype", "scale", "zero_point", "data" | "base64"}, ...].

    "base64" holds the tensor's bytes in C order, little-endian.
    """

    name = "raw"
    Config = RawConfig

    def process(self, outputs: list[NDArray[Any]], request: Request) -> Any:
        config: RawConfig = self.config
        tensors = []
        for i, out in enumerate(outputs):
            spec = self.info.outputs[i] if i < len(self.info.outputs) else None
            scale, zero_point = (spec.scale, spec.zero_point) if spec is not None else (0.0, 0)
            values = out
            if config.dequantize and spec is not None and scale:
                values = dequantize(out, spec)
                scale, zero_point = 0.0, 0
            item: dict[str, Any] = {
                "name": spec.name if spec is not None else f"output{i}",
                "shape": [int(d) for d in values.shape],
                "dtype": str(values.dtype),
                "scale": scale,
                "zero_point": zero_point,
            }
            if values.size <= config.max_list:
                item["data"] = values.tolist()
            else:
                data = np.ascontiguousarray(values).astype(
                    values.dtype.newbyteorder("<"), copy=False
                )
                item["base64"] = base64.b64encode(data.tobytes()).decode("ascii")
            tensors.append(item)
        return tensors
