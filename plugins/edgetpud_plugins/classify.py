"""`classify`: the top-k classes of a classifier's score vector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgetpud.messages import Request
from edgetpud.plugins import Postprocessor
from edgetpud.preprocess import dequantize
from edgetpud.schema import option


@dataclass(frozen=True)
class ClassifyConfig:
    top_k: int = option("How many classes to report, best first.", 3, minimum=1, maximum=1000)
    threshold: float = option(
        "Leave out classes whose (dequantized) score is below this.", 0.0, minimum=0.0
    )
    output: int = option("Which output tensor holds the scores (0 = the first).", 0, minimum=0)


class Classify(Postprocessor):
    """Output: [{"id", "label", "score"}, ...], best first; scores are dequantized."""

    name = "classify"
    Config = ClassifyConfig

    def process(self, outputs: list[NDArray[Any]], request: Request) -> Any:
        config: ClassifyConfig = self.config
        index = min(config.output, len(outputs) - 1)
        spec = self.info.outputs[index]
        raw = outputs[index].reshape(-1)
        # Dequantizing is monotonic when the scale is positive, so the top k are chosen on
        # the raw integers and only those k are dequantized: dequantizing the whole vector
        # (1001 floats for ImageNet) on every request was most of this plugin's cost.
        quantized = raw.dtype.kind in "iu" and bool(spec.scale) and spec.scale > 0
        key = raw if quantized else dequantize(raw, spec)
        n, k = raw.size, min(config.top_k, raw.size)
        best = np.argpartition(key, n - k)[n - k :] if k < n else np.arange(n)
        scores = dequantize(raw[best], spec) if quantized else key[best]
        order = np.argsort(-scores, kind="stable")
        return [
            {
                "id": int(best[j]),
                "label": self._label(int(best[j])),
                "score": round(float(scores[j]), 6),
            }
            for j in order
            if scores[j] >= config.threshold
        ]

    def _label(self, class_id: int) -> str:
        return self.labels.name(class_id) if self.labels is not None else str(class_id)
