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
        scores = dequantize(outputs[index], self.info.outputs[index]).reshape(-1)
        k = min(config.top_k, scores.size)
        best = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
        best = best[np.argsort(-scores[best], kind="stable")]
        return [
            {"id": int(i), "label": self._label(int(i)), "score": round(float(scores[i]), 6)}
            for i in best
            if scores[i] >= config.threshold
        ]

    def _label(self, class_id: int) -> str:
        return self.labels.name(class_id) if self.labels is not None else str(class_id)
