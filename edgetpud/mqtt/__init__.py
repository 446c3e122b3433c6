"""The MQTT link: results, health, events and availability out; requests in.

| module | holds |
|---|---|
| `link.py` | `MqttLink`, the facade the daemon uses; wires the parts below |
| `transport.py` | the paho client (the only paho importer): connect, window, resend |
| `outbox.py` | the ordered backlog the app owns; survives a relink |
| `topics.py` | topic names and the `Incoming` record |
| `protocol.py` | reading requests, refusals, reply routing |
| `fleet.py` | shared-subscription fleet requests, pause/resume, peers |
| `discovery.py` | Home Assistant discovery configs |
| `retained.py` | reading retained topics once (`edgetpud status`) |
"""

from edgetpud.mqtt.link import MqttLink, MqttStats
from edgetpud.mqtt.outbox import Outbox
from edgetpud.mqtt.retained import read_retained
from edgetpud.mqtt.topics import Topics
from edgetpud.mqtt.transport import _ReplyProperties

__all__ = ["MqttLink", "MqttStats", "Outbox", "Topics", "_ReplyProperties", "read_retained"]
