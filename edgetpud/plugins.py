"""Plugin API and discovery.

A plugin is a class with a `name`, a `kind` ("source" or "postprocess"), a
`Config` frozen dataclass validated by `edgetpud.schema` (so its errors carry
full dotted paths such as `models.birds.source.path`), and a
`check_environment()` that raises `PluginError` naming the package to install
when an optional dependency is missing.

Plugins are found only through the `edgetpud.plugins` entry-point group; the
built-ins in `plugins/edgetpud_plugins` are registered in pyproject.toml the
same way a third-party package registers its own. The entry-point name, the
class's `name` and the TOML `type` must be one string.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from edgetpud.errors import PluginError
from edgetpud.messages import Request, Result

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from edgetpud.labels import Labels

if sys.version_info >= (3, 10):
    from importlib.metadata import entry_points
else:  # pragma: no cover - Python 3.9
    from importlib_metadata import entry_points

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "edgetpud.plugins"
PluginKind = Literal["source", "postprocess"]
PluginState = Literal["loaded", "load_error", "environment_error"]
Resize = Literal["stretch", "letterbox", "center-crop"]
STOP_TIMEOUT = 5.0


class TensorInfo(Protocol):
    """What plugins read of one model tensor (edgetpud.modelfile.TensorSpec fits it)."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> Sequence[int]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def scale(self) -> float: ...
    @property
    def zero_point(self) -> int: ...


class ModelInfo(Protocol):
    """What plugins read of a model (edgetpud.modelfile.ModelInfo fits it)."""

    @property
    def inputs(self) -> Sequence[TensorInfo]: ...
    @property
    def outputs(self) -> Sequence[TensorInfo]: ...


class Plugin:
    """Base of every plugin class."""

    name: ClassVar[str]
    kind: ClassVar[PluginKind]
    Config: ClassVar[type[Any]]

    @classmethod
    def check_environment(cls) -> None:
        """Raise PluginError (naming what to install) if something the plugin needs is missing."""


class Source(Plugin):
    """Produces Requests into one model's queue.

    The service builds one per model: `Source(model, config, info, emit)`, then
    `start()`, and `stop()` on shutdown or reassignment. `emit(request)` puts a
    request on the model's queue and returns False when the queue is full (block
    policy); sources then wait and retry (`offer()`), they never drop. After the
    result of a request this source emitted is published, the service calls
    `completed(result)`.

    A thread-transport source implements `run()`, which loops until `stopping()`
    is true; `start()` runs it in a thread named "source:<type>:<model>". A
    source with `transport = "mqtt"` has no thread: the MQTT layer subscribes to
    the model's request topic on its behalf.
    """

    kind: ClassVar[PluginKind] = "source"
    transport: ClassVar[str] = "thread"
    retry_interval: ClassVar[float] = 0.05

    def __init__(
        self, model: str, config: Any, info: ModelInfo, emit: Callable[[Request], bool]
    ) -> None:
        self.model = model
        self.config = config
        self.info = info
        self.emit = emit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def resize(self) -> Resize:
        """How images are fitted to the model input: from the plugin's `resize` option."""
        value: Resize = getattr(self.config, "resize", "stretch")
        return value

    @property
    def thread_name(self) -> str:
        return f"source:{self.name}:{self.model}"

    def start(self) -> None:
        if self.transport != "thread" or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish and wait for it; safe to call more than once."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                log.warning("%s did not stop within %.0f s", thread.name, STOP_TIMEOUT)

    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when stop was asked meanwhile."""
        return self._stop.wait(seconds)

    def offer(self, request: Request) -> bool:
        """Emit, waiting while the queue is full; False only when stopped first."""
        while not self._stop.is_set():
            if self.emit(request):
                return True
            self._stop.wait(self.retry_interval)
        return False

    def run(self) -> None:
        """The source's loop (thread transport): produce until `stopping()`."""

    def completed(self, result: Result) -> None:
        """The result of a request from this source was published."""

    def _main(self) -> None:
        try:
            self.run()
        except Exception:
            log.exception(
                "%s failed; it produces no more requests until restarted", self.thread_name
            )


class Postprocessor(Plugin):
    """Turns a model's output tensors into a JSON-able result."""

    kind: ClassVar[PluginKind] = "postprocess"

    def __init__(self, config: Any, info: ModelInfo, labels: Labels | None) -> None:
        self.config = config
        self.info = info
        self.labels = labels

    def process(self, outputs: list[NDArray[Any]], request: Request) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class PluginStatus:
    """What happened when a plugin was looked up: published in health."""

    name: str
    kind: str
    state: PluginState
    error: str = ""
    origin: str = ""


@dataclass(frozen=True)
class Registry:
    """Every plugin the entry points offer, with a status for each."""

    plugins: dict[tuple[str, str], type[Plugin]]
    statuses: dict[str, PluginStatus]

    def mark(self, name: str, state: PluginState, error: str) -> None:
        """Record a later problem with a plugin (e.g. a config error) for health."""
        old = self.statuses.get(name)
        kind, origin = (old.kind, old.origin) if old else ("?", "")
        self.statuses[name] = PluginStatus(name, kind, state, error, origin)

    def health(self) -> list[dict[str, str]]:
        """Statuses as JSON-able records, sorted by name."""
        return [
            {"name": s.name, "kind": s.kind, "state": s.state, "error": s.error, "origin": s.origin}
            for s in sorted(self.statuses.values(), key=lambda s: s.name)
        ]

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self.plugins if k == kind)

    def get(self, kind: str, name: str) -> type[Plugin]:
        """The plugin class for a TOML `type`, or PluginError saying what is wrong."""
        cls = self.plugins.get((kind, name))
        if cls is not None:
            return cls
        status = self.statuses.get(name)
        if status is not None and status.state != "loaded":
            raise PluginError(f'{kind} plugin "{name}" could not be loaded: {status.error}')
        available = ", ".join(f'"{n}"' for n in self.names(kind)) or "none"
        raise PluginError(
            f'no {kind} plugin named "{name}" is installed (available: {available}); '
            "install the package that provides it or fix the type"
        )


def discover() -> Registry:
    """Load every plugin registered under the `edgetpud.plugins` entry-point group.

    A plugin that fails to import, or whose names disagree, gets a `load_error`
    status instead of raising: a broken plugin must not take the daemon down.
    """
    plugins: dict[tuple[str, str], type[Plugin]] = {}
    statuses: dict[str, PluginStatus] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        origin = ep.value
        try:
            cls = ep.load()
        except Exception as exc:
            log.warning("plugin %s (%s) failed to load: %s", ep.name, origin, exc)
            statuses[ep.name] = PluginStatus(
                ep.name, "?", "load_error", f"import failed: {exc}", origin
            )
            continue
        problem = _shape_problem(ep.name, cls)
        if problem:
            log.warning("plugin %s (%s) is unusable: %s", ep.name, origin, problem)
            statuses[ep.name] = PluginStatus(ep.name, "?", "load_error", problem, origin)
            continue
        plugins[(cls.kind, cls.name)] = cls
        try:
            cls.check_environment()
        except PluginError as exc:
            log.debug("plugin %s cannot be used here: %s", ep.name, exc)
            statuses[ep.name] = PluginStatus(
                ep.name, cls.kind, "environment_error", str(exc), origin
            )
            continue
        except Exception as exc:
            problem = f"check_environment failed: {exc}"
            log.warning("plugin %s (%s) is unusable: %s", ep.name, origin, problem)
            del plugins[(cls.kind, cls.name)]
            statuses[ep.name] = PluginStatus(ep.name, cls.kind, "load_error", problem, origin)
            continue
        statuses[ep.name] = PluginStatus(ep.name, cls.kind, "loaded", "", origin)
    return Registry(plugins, statuses)


def _shape_problem(ep_name: str, cls: Any) -> str:
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        return "the entry point does not name a subclass of edgetpud.plugins.Plugin"
    name = getattr(cls, "name", None)
    if name != ep_name:
        return f'the entry point is named "{ep_name}" but the class says name = {name!r}'
    if getattr(cls, "kind", None) not in ("source", "postprocess"):
        return f'kind must be "source" or "postprocess", got {getattr(cls, "kind", None)!r}'
    if not hasattr(cls, "Config"):
        return "the class has no Config dataclass"
    return ""


_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, discovered once."""
    global _registry
    if _registry is None:
        _registry = discover()
    return _registry
