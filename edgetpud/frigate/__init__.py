"""Frigate's `zmq` detector protocol: a ZeroMQ endpoint in front of one edgetpud model.

Frigate (0.16+) can hand each frame's input tensor to an external process through
its `zmq` detector (`frigate/detectors/plugins/zmq_ipc.py`, docs/frigate.md has the
protocol as that file implements it): a REQ socket sends two frames, a JSON header
(`shape`, `dtype`, `model_type`) and the raw C-order tensor, and waits
`request_timeout_ms` (200) for either one frame of 480 bytes or a header and the
bytes of a float32 [20, 6] array, rows `[class_id, score, y_min, x_min, y_max,
x_max]` with boxes normalised to 0..1. On a timeout it resets its socket and counts
no detections. Newer Frigate first sends a one-frame `{"model_request": true}` and
waits up to 30 s for `{"model_available": true, "model_loaded": true}`.

`FrigateEndpoint` binds a ROUTER socket, so any number of Frigate detector processes
(or Frigate instances) can be connected at once; each request goes on the model's
queue, where every worker serving the model (replicas, CPU fallback) takes from, and
is answered when it finishes, in whatever order requests finish. It talks to the
model only through a `ModelPort` (submit a Request whose `reply` is the endpoint's,
ask whether the model can serve now), so it runs against a bare queue and worker in
tests as well as inside the daemon.

What it promises Frigate:
- a request the model cannot serve soon (no worker running it, queue full) is
  answered with no detections at once, never left to Frigate's timeout;
- a frame whose shape or type is not the model's input is answered with no
  detections and logged (or stretched to fit, `on_mismatch = "resize"`);
- a request still waiting when its client's timeout has certainly passed is dropped
  unanswered: Frigate has already counted it as nothing, and late work would only
  delay the requests behind it.

The modules:
- protocol.py: reading requests and handshakes, encoding replies (pure);
- clients.py: the clients and their counters, the hand-off times (`Ledger`);
- notices.py: rate-limited warnings and events;
- router.py: the ROUTER socket and its thread, the only importer of zmq (pyzmq);
- port.py: `ModelPort` / `DaemonPort`, the endpoint's way to the model;
- endpoint.py: `FrigateEndpoint`, which puts them together;
- component.py: `FrigateComponent`, the endpoint as a daemon component.
"""

from edgetpud.frigate.component import FrigateComponent
from edgetpud.frigate.endpoint import FrigateEndpoint
from edgetpud.frigate.port import DaemonPort, ModelPort
from edgetpud.frigate.router import FrigateError

__all__ = ["DaemonPort", "FrigateComponent", "FrigateEndpoint", "FrigateError", "ModelPort"]
