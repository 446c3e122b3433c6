"""`detect`: SSD-style detections (boxes, classes, scores, count) in source-image pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgetpud.errors import PluginError, RequestError
from edgetpud.messages import Request
from edgetpud.plugins import Postprocessor
from edgetpud.preprocess import Transform, dequantize, source_size
from edgetpud.schema import option


@dataclass(frozen=True)
class DetectConfig:
    threshold: float = option("Leave out detections scoring below this.", 0.5, minimum=0.0)
    max_detections: int = option(
        "At most this many detections per image, best first.", 25, minimum=1, maximum=1000
    )
    classes: tuple[int, ...] = option("Only report these class ids; empty reports every class.", ())


class Detect(Postprocessor):
    """Output: [{"id", "label", "score", "box": {"xmin", "ymin", "xmax", "ymax"}}, ...].

    Boxes are in the source image's pixels when the request was an image (the
    letterbox or crop is undone), else in model-input pixels.
    """

    name = "detect"
    Config = DetectConfig

    def __init__(self, config: Any, info: Any, labels: Any) -> None:
        super().__init__(config, info, labels)
        n = len(info.outputs) if info is not None else 4
        if n != 4:  # refuse at start: the model is disabled with this, not every request
            raise PluginError(
                f'postprocess type "detect" needs an SSD-style model with 4 outputs (boxes, '
                f"classes, scores, count); this model has {n}: set the model's postprocess "
                'type to "classify" or "raw"'
            )

    def process(self, outputs: list[NDArray[Any]], request: Request) -> Any:
        config: DetectConfig = self.config
        boxes, classes, scores, count = self._split(outputs)
        _, in_h, in_w = self._input_size()
        size = source_size(request.meta)
        transform = Transform.from_meta(request.meta.get("transform"))
        order = np.argsort(-scores[:count], kind="stable")
        found: list[dict[str, Any]] = []
        for i in order:
            score = float(scores[i])
            class_id = round(float(classes[i]))
            if score < config.threshold or (config.classes and class_id not in config.classes):
                continue
            ymin, xmin, ymax, xmax = (float(v) for v in boxes[i])
            x0, y0, x1, y1 = xmin * in_w, ymin * in_h, xmax * in_w, ymax * in_h
            limit_w, limit_h = float(in_w), float(in_h)
            if transform is not None and size is not None:
                x0, y0 = transform.to_source(x0, y0)
                x1, y1 = transform.to_source(x1, y1)
                limit_w, limit_h = float(size[0]), float(size[1])
            box = {
                "xmin": round(min(max(x0, 0.0), limit_w), 1),
                "ymin": round(min(max(y0, 0.0), limit_h), 1),
                "xmax": round(min(max(x1, 0.0), limit_w), 1),
                "ymax": round(min(max(y1, 0.0), limit_h), 1),
            }
            label = self.labels.name(class_id) if self.labels is not None else str(class_id)
            found.append({"id": class_id, "label": label, "score": round(score, 6), "box": box})
            if len(found) >= config.max_detections:
                break
        return found

    def _input_size(self) -> tuple[int, int, int]:
        shape = list(self.info.inputs[0].shape) if self.info.inputs else []
        if len(shape) == 4:
            return shape[0], shape[1], shape[2]
        return 1, 1, 1

    def _split(
        self, outputs: list[NDArray[Any]]
    ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], int]:
        """Find boxes, classes, scores and count among the four outputs.

        TF1 SSD models emit them in that order; TF2 ones emit scores, boxes,
        count, classes. Boxes are told by their last dimension of 4, count by its
        single element.
        """
        if len(outputs) != 4:
            raise RequestError(
                f"the detect postprocessor needs an SSD-style model with 4 outputs (boxes, classes, "
                f"scores, count), this one has {len(outputs)}; use postprocess type raw"
            )
        real = [dequantize(o, s) for o, s in zip(outputs, self.info.outputs)]
        box_i = next((i for i, o in enumerate(real) if o.ndim == 3 and o.shape[-1] == 4), None)
        # count is [1]; with one detection, classes and scores ([1, 1]) have one element too
        singles = [i for i, o in enumerate(real) if o.size == 1 and i != box_i]
        count_i = next((i for i in singles if real[i].ndim == 1), singles[-1] if singles else None)
        if box_i is None or count_i is None:
            raise RequestError(
                "the model's outputs do not look like SSD boxes/classes/scores/count "
                f"(shapes {[list(o.shape) for o in real]}); use postprocess type raw"
            )
        rest = [i for i in range(4) if i not in (box_i, count_i)]
        class_i, score_i = (rest[1], rest[0]) if count_i == 2 else (rest[0], rest[1])
        boxes = real[box_i].reshape(-1, 4)
        classes, scores = real[class_i].reshape(-1), real[score_i].reshape(-1)
        count = int(min(max(int(real[count_i].reshape(-1)[0]), 0), len(scores), len(boxes)))
        return boxes, classes, scores, count
