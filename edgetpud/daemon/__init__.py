"""The supervisor: one loop, the only writer of daemon state (see docs/architecture.md).

`supervisor.Supervisor` runs the loop; `state` holds what it owns; `events` is the
typed union of what other threads put on its queue; `ports` are the Protocols of
the parts it drives (the MQTT link, the device watcher, the runtime, components),
which edgetpud/app.py builds and passes in.
"""
