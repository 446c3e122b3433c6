"""The exception tree. Every message says what happened and what to do next."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class EdgetpudError(Exception):
    """Base of every error edgetpud raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file, at a dotted key path such as `models.birds.priority`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(EdgetpudError):
    """The configuration is invalid; carries every issue found, not just the first."""

    def __init__(self, issues: Sequence[ConfigIssue], source: str = "") -> None:
        self.issues = tuple(issues)
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{head}{len(self.issues)} problem(s) in the configuration:\n{lines}")


class ConfigUnreadableError(EdgetpudError):
    """The config file could not be read or parsed as TOML at all."""


class DeviceError(EdgetpudError):
    """An Edge TPU could not be found, identified or opened."""


class ModelError(EdgetpudError):
    """A model file is missing, malformed, or cannot run where it was asked to."""


class PluginError(EdgetpudError):
    """A plugin could not be loaded, configured, or lacks something it needs."""


class RequestError(EdgetpudError):
    """One request cannot be processed (bad image, wrong tensor size): answer it, not a device fault."""
