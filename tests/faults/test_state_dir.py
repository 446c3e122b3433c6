"""A state folder the daemon cannot use: it says so in one clear log line and keeps serving.

`learned-ports.json` is written when an accelerator cannot open an Edge TPU context
(here: the fake library's `fail_open`), so each case plugs one such accelerator next to
a good one. Root ignores file modes (CI runs as root), so "unwritable" is a state_dir
below a regular file (ENOTDIR for everyone); ENOSPC itself cannot be produced without
privileges, but it takes the same OSError path as these.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_service import config_text, usb_root
from tests.support.daemon import Daemon
from tests.support.faults import fault_rig
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

ONE_MODEL = """
[models.alpha]
model = "{m}/mobilenet_v1_0.25_128_quant_edgetpu.tflite"
queue_size = 100
"""


def prepare(case: str, tmp: Path) -> tuple[Path, str]:
    """The state_dir to configure and the log line the case must produce."""
    if case == "unwritable":
        blocker = tmp / "not-a-folder"
        blocker.write_text("a regular file where the state folder's parent should be\n")
        return blocker / "state", "cannot save learned bad ports"
    state = tmp / f"state-{case}"
    state.mkdir()
    if case == "corrupt":
        (state / "learned-ports.json").write_bytes(b'{"schema": "edgetpud.learned-po\x00\xff')
        return state, "is corrupt"
    if case == "endless":  # a link to /dev/zero: a bounded read, not a hang
        (state / "learned-ports.json").symlink_to("/dev/zero")
        return state, "is corrupt (larger than"
    (state / "learned-ports.json").mkdir()  # a folder where the file should be
    return state, "cannot read"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["unwritable", "corrupt", "endless", "folder_in_place"])
def test_unusable_state_is_logged_and_the_daemon_still_serves(
    case: str, tmp_path: Path, models_dir: Path, fake_lib: Path
) -> None:
    with fault_rig(tmp_path, models_dir, fake_lib) as rig:
        root = usb_root(rig.tb)
        rig.tb.add_accelerator(root, 1)
        rig.tb.add_accelerator(root, 2)
        rig.control.set(fail_open="2-1")
        state, line = prepare(case, tmp_path)
        text = config_text(tmp_path, rig.broker.port, models_dir, fake_lib, models=ONE_MODEL)
        text = text.replace(f'state_dir = "{tmp_path / "state"}"', f'state_dir = "{state}"')
        assert f'state_dir = "{state}"' in text
        d = Daemon(tmp_path / "daemon", text, env=rig.control.env())
        rig.daemons.append(d)
        d.start().wait_ready()
        wait_for(lambda: line in d.log(), 60, f"the log line {line!r}")
        wait_for(lambda: rig.placement("alpha") == ["usb:2-2"], 60, "alpha on the good device")
        ids = [f"s{i}" for i in range(20)]
        rig.send("alpha", ids)
        wait_for(lambda: set(ids) <= set(rig.answered("alpha")), 60, "alpha serving")
        assert all("error" not in r for r in rig.answered("alpha").values())
        lines = [x for x in d.log().splitlines() if line in x]
        assert len(lines) == 1, lines  # one clear line, not one per attempt
        assert "learned" in lines[0] and str(state) in lines[0]
        assert "Traceback" not in d.log()
        assert d.stop() == 0
