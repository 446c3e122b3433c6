"""A Frigate `zmq` detector client written from the protocol (docs/frigate.md), for tests.

It does what Frigate's `frigate/detectors/plugins/zmq_ipc.py` does: a REQ socket with
RCVTIMEO/SNDTIMEO = request_timeout_ms and LINGER 0; a one-frame model handshake; per
frame a two-frame request (JSON header with shape, dtype and model_type, then the raw
C-order tensor); a reply of one 480-byte frame or a header and the array's bytes; and on
a timeout a new socket and no detections. It keeps what Frigate would not: which reply
form came, how long each request took, and how many timed out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
from numpy.typing import NDArray


@dataclass
class Reply:
    rows: NDArray[np.float32]  # [20, 6]
    form: str  # "one-frame", "two-frame", "timeout"
    seconds: float


@dataclass
class FrigateClient:
    endpoint: str
    timeout_ms: int = 200
    model_name: str = "ssd.tflite"
    model_type: str = "ssd"
    context: Any = None
    timeouts: int = 0
    replies: list[Reply] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = self.context or zmq.Context.instance()
        self.socket: Any = None
        self._connect()

    def _connect(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.context.socket(zmq.REQ)
        self.socket.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        self.socket.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(self.endpoint)

    def handshake(self, timeout_ms: int = 30000) -> dict[str, Any]:
        """Newer Frigate's model check, with its 30 s timeout."""
        self.socket.send_multipart(
            [json.dumps({"model_request": True, "model_name": self.model_name}).encode()]
        )
        self.socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
        try:
            frames = self.socket.recv_multipart()
        finally:
            self.socket.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        assert len(frames) == 1, f"the handshake reply has {len(frames)} frames, not 1"
        answer: dict[str, Any] = json.loads(frames[0])
        return answer

    def detect(self, tensor: NDArray[Any]) -> Reply:
        header = {
            "shape": list(tensor.shape),
            "dtype": tensor.dtype.name,
            "model_type": self.model_type,
        }
        start = time.monotonic()
        try:
            self.socket.send_multipart(
                [json.dumps(header).encode(), memoryview(tensor.tobytes(order="C"))]
            )
            frames = self.socket.recv_multipart()
        except zmq.Again:  # Frigate: reset the socket, count no detections
            self.timeouts += 1
            self._connect()
            reply = Reply(np.zeros((20, 6), np.float32), "timeout", time.monotonic() - start)
            self.replies.append(reply)
            return reply
        seconds = time.monotonic() - start
        if len(frames) == 1:
            assert len(frames[0]) == 480, f"a one-frame reply of {len(frames[0])} bytes, not 480"
            rows = np.frombuffer(frames[0], np.float32).reshape(20, 6)
            form = "one-frame"
        else:
            head = json.loads(frames[0])
            assert head.get("dtype", "float32") == "float32", head
            rows = np.frombuffer(frames[1], np.dtype(head.get("dtype", "float32")))
            rows = rows.reshape(tuple(head["shape"]))
            assert rows.shape == (20, 6), f"a two-frame reply shaped {rows.shape}"
            form = "two-frame"
        reply = Reply(rows.copy(), form, seconds)
        self.replies.append(reply)
        return reply

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None


def expected_rows(boxes: Any, classes: Any, scores: Any, threshold: float) -> NDArray[np.float32]:
    """What a correct endpoint answers for an SSD model that detects exactly these (boxes
    normalised ymin, xmin, ymax, xmax): best first, those under `threshold` left out."""
    out = np.zeros((20, 6), np.float32)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = [i for i in order if scores[i] >= threshold][:20]
    for row, i in enumerate(kept):
        out[row] = [classes[i], scores[i], *boxes[i]]
    return out
