"""Device hosts: every Edge TPU in use (and the CPU) served by a child process of its own.

The real libedgetpu aborts the whole process on a failed USB transfer and can block an
invoke for ever; inside the daemon either would cost every model. So the TFLite
runtime runs only in hosts, one `python -m edgetpud.hosts` process per device, and
the daemon's worker lanes drive their interpreters there through `HostSession`s:

- `pool.HostPool`: starts, restarts (with backoff) and closes hosts; gives sessions;
- `process.DeviceHost`: one host process, its stderr tail and exit reason;
- `session.HostSession`: one lane's interpreter in a host (the workers' Session);
- `slots`: the shared memory (a memfd per lane) that tensors cross in;
- `wire`: the small control messages (SOCK_SEQPACKET, one byte per invoke);
- `child`: the host process itself.

docs/workers.md ("Device hosts") tells the story and the measurements.
"""

from edgetpud.hosts.pool import HostFailed, HostPool, HostStatus
from edgetpud.hosts.process import DeviceHost, HostStartFailed, describe_exit
from edgetpud.hosts.session import HostLost, HostSession

__all__ = [
    "DeviceHost",
    "HostFailed",
    "HostLost",
    "HostPool",
    "HostSession",
    "HostStartFailed",
    "HostStatus",
    "describe_exit",
]
