"""The plain-socket echo responders that found the floor of benchmark 3 (docs/benchmarks.md,
"Why the request-path target is out of reach"): they answer every `<base>/models/+/infer`
request on its MQTT 5 response topic with bench/rawmqtt.py, no paho.

- `--client raw`: answering from the thread that read the request: the floor of the
  broker, TCP loopback and this VM's wake-ups;
- `--client rawthread`: answering from a worker thread the reader hands each request to;
  with `--wait-ms 2.6` the worker first sleeps as a simulated invoke does.

    .venv/bin/python -m bench.investigations.raw_echo --port 1883 --base bench/box --client raw
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time

from bench.echo_responder import REPLY, main
from bench.rawmqtt import CORRELATION_DATA, RESPONSE_TOPIC, Message, RawClient

PR_SET_TIMERSLACK = 29


def reply(client: RawClient, msg: Message) -> None:
    """Answer `msg` on its MQTT 5 response topic, if it has one."""
    topic = msg.props.get(RESPONSE_TOPIC)
    if topic:
        corr = {CORRELATION_DATA: msg.props.get(CORRELATION_DATA, b"")}
        client.publish(topic.decode(), REPLY, qos=1, props=corr)


def serve_raw(
    host: str, port: int, requests: str, stop: threading.Event, wait_ms: float = 0.0
) -> None:
    del wait_ms  # answers at once, from the reading thread
    client = RawClient(host, port, "bench-echo-responder")
    client.subscribe(requests, qos=1, on_message=lambda msg: reply(client, msg))
    stop.wait()
    client.close()


def serve_raw_thread(
    host: str, port: int, requests: str, stop: threading.Event, wait_ms: float = 0.0
) -> None:
    """As serve_raw, but the reading thread hands each request to a worker thread, which
    answers: the least any responder with a worker thread per model pays here. With
    `wait_ms`, the worker first sleeps that long as the fake libedgetpu's simulated
    invoke does (1 ns of timer slack), so the figure also holds the device's wake-up."""
    client = RawClient(host, port, f"bench-echo-responder-thread-{wait_ms:g}")
    inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()

    def work() -> None:
        if wait_ms:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        while not stop.is_set():
            try:
                msg = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if wait_ms:
                time.sleep(wait_ms / 1000.0)  # clock_nanosleep, as the fake library sleeps
            reply(client, msg)

    worker = threading.Thread(target=work, name="echo:worker", daemon=True)
    worker.start()
    client.subscribe(requests, qos=1, on_message=inbox.put)
    stop.wait()
    worker.join()
    client.close()


if __name__ == "__main__":
    raise SystemExit(main(__doc__, {"raw": serve_raw, "rawthread": serve_raw_thread}))
