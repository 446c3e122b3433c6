"""`edgetpud status --watch`: the table redrawn as the daemon's health changes."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.test_mqtt_status import HEALTH, run_link, write_config
from tests.support.broker import Broker


def test_watch_redraws_the_table_with_new_health_until_interrupted(tmp_path: Path) -> None:
    with Broker(tmp_path) as broker:
        link = run_link(broker, "box1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgetpud", "status", "--watch", "0.3", "--config",
             str(write_config(tmp_path, broker, "box1"))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            out = ""

            def read_until(text: str) -> None:
                nonlocal out
                deadline = time.monotonic() + 60
                while text not in out and time.monotonic() < deadline:
                    line = proc.stdout.readline() if proc.stdout is not None else ""
                    if not line:
                        break
                    out += line

            read_until("41.5")  # the first health, drawn at least once
            newer = copy.deepcopy(HEALTH)
            newer["models"]["birds"]["rate"] = 97.25
            link.publish_health(newer)
            read_until("97.2")
            proc.send_signal(signal.SIGINT)
            rest, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            link.stop()
    out += rest
    assert proc.returncode == 0, err
    assert out.count("edgetpud status, every 0.3s (Ctrl-C to stop)") >= 2
    assert "41.5" in out  # the first health
    assert "97.2" in out  # the health published while watching
    assert "\x1b[2J" not in out  # piped: no screen clearing, the tables follow each other
    assert "Traceback" not in err
