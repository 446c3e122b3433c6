"""`edgetpud status` shows each device host: pid, state, restarts, deaths, last exit."""

from __future__ import annotations

from typing import Any

from edgetpud.commands.status import render


def health(hosts: list[dict[str, Any]] | None) -> dict[str, Any]:
    h: dict[str, Any] = {
        "time": 1000.0,
        "daemon": {"version": "0.1.0", "uptime_s": 30, "config_generation": 1},
        "models": {},
    }
    if hosts is not None:
        h["hosts"] = hosts
    return h


def test_each_host_is_a_row_with_why_it_last_died() -> None:
    out = render(
        {
            "box": health(
                [
                    {"device": "cpu", "pid": 4100, "state": "running", "restarts": 0,
                     "deaths": 0, "last_exit": "", "sessions": 1},
                    {"device": "usb:2-1", "pid": 4242, "state": "running", "restarts": 2,
                     "deaths": 2, "last_exit": "aborted: F1205 usb_driver.cc:976] transfer in "
                     "failed", "sessions": 4},
                    {"device": "usb:2-2", "pid": 0, "state": "failed", "restarts": 3,
                     "deaths": 3, "last_exit": "was killed (SIGKILL)", "sessions": 0},
                ]
            )
        },
        {"box": "online"},
        now=1001.0,
    )  # fmt: skip
    table = out.split("HOST FOR", 1)[1]
    rows = {line.split()[1]: line for line in table.splitlines()[1:] if line.strip()}
    assert set(rows) == {"cpu", "usb:2-1", "usb:2-2"}
    assert "4242" in rows["usb:2-1"] and "aborted: F1205 usb_driver.cc:976]" in rows["usb:2-1"]
    assert rows["usb:2-2"].split()[2:6] == ["-", "failed", "3", "3"]


def test_no_hosts_section_no_table() -> None:
    out = render({"box": health(None)}, {"box": "online"}, now=1001.0)
    assert "HOST FOR" not in out
