"""`camera`: frames from a V4L2 device or an RTSP/HTTP stream, through OpenCV.

Needs OpenCV (`pip install opencv-python-headless` or `apt install
python3-opencv`); without it the config is refused with that hint. Each frame
is offered once: when the model's queue is full the frame is skipped, so use
`overflow = "latest"` on the model to always work on the newest frame.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

from edgetpud.errors import PluginError
from edgetpud.messages import Request
from edgetpud.plugins import Resize, Source
from edgetpud.schema import option
from edgetpud_plugins.common import resize_option

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraConfig:
    url: str = option(
        'A V4L2 device ("/dev/video0"), a device number ("0"), or a stream URL '
        '("rtsp://user@cam/stream").',
        "/dev/video0",
    )
    fps: float = option(
        "Frames per second to send at most; 0 sends every frame the camera delivers.",
        0.0,
        minimum=0.0,
        maximum=1000.0,
    )
    width: int = option("Capture width to ask the camera for; 0 keeps its default.", 0, minimum=0)
    height: int = option("Capture height to ask the camera for; 0 keeps its default.", 0, minimum=0)
    reconnect: float = option(
        "How long to wait before reopening a camera that failed or ended.",
        5.0,
        kind="duration",
        minimum=0.1,
        maximum=3600,
    )
    resize: Resize = resize_option()


class Camera(Source):
    """RGB frames (kind "array"); meta carries the frame number."""

    name = "camera"
    Config = CameraConfig

    @classmethod
    def check_environment(cls) -> None:
        if importlib.util.find_spec("cv2") is None:
            raise PluginError(
                "the camera source needs OpenCV, which is not installed; install it with "
                "`pip install opencv-python-headless` (or `apt install python3-opencv`)"
            )

    def run(self) -> None:
        import cv2

        config: CameraConfig = self.config
        target: Any = int(config.url) if config.url.isdigit() else config.url
        frame_no = 0
        min_gap = 1.0 / config.fps if config.fps > 0 else 0.0
        last = 0.0
        while not self.stopping():
            cap = cv2.VideoCapture(target)
            if config.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
            if config.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
            if not cap.isOpened():
                log.warning(
                    "%s: cannot open %s; check the device or URL, retrying in %.0f s",
                    self.thread_name,
                    config.url,
                    config.reconnect,
                )
            try:
                while cap.isOpened() and not self.stopping():
                    ok, frame = cap.read()
                    if not ok:
                        log.warning(
                            "%s: %s stopped delivering frames", self.thread_name, config.url
                        )
                        break
                    now = cv2.getTickCount() / cv2.getTickFrequency()
                    if min_gap and now - last < min_gap:
                        continue
                    last = now
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    request = Request(
                        self.model,
                        rgb,
                        "array",
                        source=f"camera:{config.url}",
                        meta={"frame": frame_no},
                    )
                    frame_no += 1
                    if not self.emit(request):
                        log.debug("%s: queue full, frame %d skipped", self.thread_name, frame_no)
            finally:
                cap.release()
            self.wait(config.reconnect)
