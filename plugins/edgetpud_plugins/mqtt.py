"""`mqtt` (the default source): requests arrive on the model's MQTT request topic.

The MQTT layer subscribes to `<prefix>/<node>/models/<model>/infer` and builds
the Requests; this plugin only declares that transport and the resize mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetpud.plugins import Resize, Source
from edgetpud_plugins.common import resize_option


@dataclass(frozen=True)
class MqttSourceConfig:
    resize: Resize = resize_option()


class MqttSource(Source):
    """Requests from `<topic_prefix>/<node_id>/models/<model>/infer`."""

    name = "mqtt"
    transport = "mqtt"
    Config = MqttSourceConfig
