"""`synthetic`: generated inputs at a set rate, for demos and benchmarks."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edgetpud.messages import Request
from edgetpud.plugins import Resize, Source
from edgetpud.schema import option
from edgetpud_plugins.common import resize_option

log = logging.getLogger(__name__)
FRAMES = 8  # distinct frames generated up front and cycled, so generation costs nothing later


@dataclass(frozen=True)
class SyntheticConfig:
    rate: float = option(
        "Requests per second; 0 sends as fast as the model's queue takes them.",
        10.0,
        minimum=0.0,
        maximum=100000.0,
    )
    count: int = option("Stop after this many requests; 0 never stops.", 0, minimum=0)
    width: int = option(
        "Width of the generated images; 0 uses the model's input width.", 0, minimum=0, maximum=8192
    )
    height: int = option(
        "Height of the generated images; 0 uses the model's input height.",
        0,
        minimum=0,
        maximum=8192,
    )
    pattern: Literal["noise", "gradient", "solid"] = option(
        "What the images show: random noise, a moving gradient, or one flat grey.", "noise"
    )
    encoding: Literal["none", "jpeg", "png", "bmp"] = option(
        'How requests are sent: "none" as pixel arrays (kind "array"; resized and quantized '
        'like any image), or encoded images (kind "image", adds the decode cost).',
        "none",
    )
    seed: int = option("Random seed for the noise pattern, so runs are repeatable.", 0, minimum=0)
    resize: Resize = resize_option()


class Synthetic(Source):
    """Generated RGB images; meta carries the frame number."""

    name = "synthetic"
    Config = SyntheticConfig

    def run(self) -> None:
        config: SyntheticConfig = self.config
        frames = self.frames()
        kind: Literal["image", "array"] = "array" if config.encoding == "none" else "image"
        interval = 1.0 / config.rate if config.rate > 0 else 0.0
        due = time.monotonic()
        sent = 0
        while not self.stopping() and (config.count == 0 or sent < config.count):
            request = Request(
                model=self.model,
                payload=frames[sent % len(frames)],
                kind=kind,
                source=f"synthetic:{config.pattern}",
                meta={"frame": sent},
            )
            if not self.offer(request):
                break
            sent += 1
            if interval:
                due += interval
                now = time.monotonic()
                if due < now - interval:  # fell behind (full queue): do not burst to catch up
                    due = now
                if self.wait(max(0.0, due - now)):
                    break
        log.info("%s: sent %d request(s)", self.thread_name, sent)

    def frames(self) -> list[object]:
        config: SyntheticConfig = self.config
        shape = list(self.info.inputs[0].shape) if self.info.inputs else []
        width = config.width or (shape[2] if len(shape) == 4 else 224)
        height = config.height or (shape[1] if len(shape) == 4 else 224)
        rng = np.random.default_rng(config.seed)
        out: list[object] = []
        for n in range(FRAMES):
            if config.pattern == "noise":
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            elif config.pattern == "gradient":
                xs = (np.arange(width) * 255 // max(width - 1, 1) + n * 32) % 256
                row = np.stack([xs, xs[::-1], np.full(width, n * 32 % 256)], axis=1)
                pixels = np.broadcast_to(row, (height, width, 3)).astype(np.uint8)
            else:
                pixels = np.full((height, width, 3), 128, dtype=np.uint8)
            out.append(pixels if config.encoding == "none" else _encode(pixels, config.encoding))
        return out


def _encode(pixels: NDArray[Any], encoding: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format=encoding.upper())
    return buf.getvalue()
