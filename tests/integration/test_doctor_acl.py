"""`edgetpud doctor` reads the daemon's retained health and fails the broker's ACL when
the broker refused the daemon's publishes (mqtt.publish_denied), naming the fix."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_doctor import doctor, write_config
from tests.support.broker import Broker, Subscriber


def test_broker_denials_in_health_fail_the_acl_check_with_the_fix(
    tmp_path: Path, models_dir: Path
) -> None:
    with Broker(tmp_path) as broker:
        config = write_config(tmp_path, models_dir, broker)
        health = {
            "schema": "edgetpud.health/1",
            "mqtt": {
                "publish_denied": {"replies": 3, "discovery": 12},
                "response_topics_refused": {"own": 2},
            },
        }
        with Subscriber(broker, ["x/never"], protocol="5") as client:
            for leaf, payload in (("status", b"online"), ("health", json.dumps(health).encode())):
                client.client.publish(
                    f"edgetpud/doctortest/{leaf}", payload, qos=1, retain=True
                ).wait_for_publish(10)
        code, checks, _text = doctor(config)
    assert code == 1
    acl = checks["broker ACL"]
    assert acl["status"] == "FAIL"
    assert "refused the daemon's publishes (12 discovery, 3 replies)" in acl["detail"]
    assert "Broker ACL" in acl["fix"]
    assert checks["response topics"]["status"] == "WARN"
    assert "(2 own)" in checks["response topics"]["detail"]
    assert checks["broker"]["status"] == "OK" and checks["broker"]["detail"].endswith("online")
