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
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from edgetpud.errors import PluginError

if sys.version_info >= (3, 10):
    from importlib.metadata import entry_points
else:  # pragma: no cover - Python 3.9
    from importlib_metadata import entry_points

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "edgetpud.plugins"
PluginKind = Literal["source", "postprocess"]
PluginState = Literal["loaded", "load_error", "config_error", "environment_error"]


class Plugin:
    """Base of every plugin class."""

    name: ClassVar[str]
    kind: ClassVar[PluginKind]
    Config: ClassVar[type[Any]]

    @classmethod
    def check_environment(cls) -> None:
        """Raise PluginError (naming what to install) if something the plugin needs is missing."""


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
