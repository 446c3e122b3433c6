"""A reload that changes `[mqtt]` replaces the link and keeps its backlog.

The admin's story: the daemon starts with a wrong broker host, so results pile up in
its backlog; they fix the host and reload. Every result held meanwhile must then
reach the broker, in the order the daemon produced them, up to `mqtt.backlog_limit`
(beyond it the oldest are dropped and health counts them).
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_service import BASE, Rig, config_text, rig, small_png
from tests.support.daemon import Daemon
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e
__all__ = ["rig"]  # the fixture, shared with test_service.py

FOLDER_MODEL = """
[models.alpha]
model = "{{m}}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
cpu_model = "{{m}}/mobilenet_v1_0.25_128_quant.tflite"
queue_size = 1000
[models.alpha.source]
type = "directory"
path = "{folder}"
after = "move"
settle = "100ms"
"""


def counter(request_id: str) -> int:
    """The daemon's request ids are `<prefix>-<n>`, n counting up as requests are made."""
    return int(request_id.rsplit("-", 1)[1])


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("files", "limit"), [(40, 10000), (40, 15)])
def test_fixing_the_broker_host_by_reload_delivers_every_held_result_in_order(
    rig: Rig, files: int, limit: int
) -> None:
    folder = rig.tmp / "incoming"
    folder.mkdir()
    for i in range(files):
        (folder / f"{i:03d}.png").write_bytes(small_png(i))
    good = config_text(
        rig.tmp,
        rig.broker.port,
        rig.models_dir,
        rig.fake_lib,
        models=FOLDER_MODEL.format(folder=folder),
    ).replace("[mqtt]\n", f"[mqtt]\nbacklog_limit = {limit}\n")
    # the broker listens on 127.0.0.1 only: 127.0.0.2 refuses every connection
    wrong = good.replace('host = "127.0.0.1"', 'host = "127.0.0.2"')
    assert wrong != good
    d = Daemon(rig.tmp / "daemon", wrong, env=rig.control.env())
    rig.daemons.append(d)
    d.start()
    d.wait_ready()
    # a file is moved to done/ only after its result was handed to the MQTT link
    done = folder / "done"
    wait_for(
        lambda: done.is_dir() and len(list(done.glob("*.png"))) == files,
        90,
        f"all {files} files processed while the broker is unreachable",
    )
    assert not rig.results("alpha"), "nothing can have reached the broker yet"

    d.reload(good)
    wait_for(lambda: rig.events("reload_ok"), 60, "the reload to connect and say so")

    def drained() -> bool:  # health is published after what it counts was acknowledged
        mqtt = rig.health().get("mqtt", {})
        return bool(mqtt.get("connected")) and mqtt.get("backlog") == 0

    wait_for(drained, 60, f"the backlog delivered after the reload (log: {d.log()[-2000:]})")
    got = [counter(r["request_id"]) for r in rig.results("alpha")]
    # request ids count from 1 in a new daemon, and only the folder makes requests here
    if limit >= files:
        assert got == list(range(1, files + 1)), f"not every result, in order: {got}"
    else:
        # the backlog kept the newest `limit` messages: results and the events before
        # reload_ok, and reload_ok itself when it was queued before the new link
        # connected (when the link connects first, it is sent straight away, not held);
        # health counts the rest
        events = [json.loads(m.payload)["event"] for m in rig.sub.on(f"{BASE}/events")]
        held_before = events.index("reload_ok")
        assert got == list(range(files - len(got) + 1, files + 1)), f"not the newest: {got}"
        assert len(got) + held_before in (limit - 1, limit), (got, events)
        dropped = rig.health()["mqtt"]["backlog_dropped"]
        assert dropped >= files - len(got), (dropped, got)
    log = d.log()
    assert "not delivered" not in log, log
    assert d.stop() == 0
