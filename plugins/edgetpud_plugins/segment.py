"""`segment`: per-class pixel counts and the dominant classes of a segmentation map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgetpud.messages import Request
from edgetpud.plugins import Postprocessor
from edgetpud.schema import option


@dataclass(frozen=True)
class SegmentConfig:
    top_k: int = option("How many dominant classes to report.", 5, minimum=1, maximum=1000)
    ignore: tuple[int, ...] = option(
        "Class ids left out of the dominant classes (e.g. [0] for background).", ()
    )
    min_fraction: float = option(
        "Leave out classes covering less than this fraction of the map.",
        0.0,
        minimum=0.0,
        maximum=1.0,
    )


class Segment(Postprocessor):
    """Output: {"size": [w, h], "classes": [{"id", "label", "pixels", "fraction"}], "dominant": id}.

    Accepts a map of class ids ([1, H, W]) or per-class scores ([1, H, W, C],
    reduced by argmax).
    """

    name = "segment"
    Config = SegmentConfig

    def process(self, outputs: list[NDArray[Any]], request: Request) -> Any:
        config: SegmentConfig = self.config
        out = outputs[0]
        if out.ndim == 4 and out.shape[0] == 1:
            out = out[0]
        if out.ndim == 4 or (out.ndim == 3 and out.shape[0] != 1):
            classes = np.argmax(out.reshape(-1, out.shape[-1]), axis=1)
            height, width = out.shape[-3], out.shape[-2]
        else:
            classes = out.reshape(-1).astype(np.int64)
            height, width = out.shape[-2], out.shape[-1]
        counts = np.bincount(np.clip(classes, 0, None))
        total = max(int(classes.size), 1)
        ranked = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
        chosen = [
            i for i in ranked if i not in config.ignore and counts[i] / total >= config.min_fraction
        ][: config.top_k]
        return {
            "size": [int(width), int(height)],
            "classes": [
                {
                    "id": i,
                    "label": self.labels.name(i) if self.labels is not None else str(i),
                    "pixels": int(counts[i]),
                    "fraction": round(float(counts[i]) / total, 6),
                }
                for i in chosen
            ],
            "dominant": chosen[0] if chosen else None,
        }
