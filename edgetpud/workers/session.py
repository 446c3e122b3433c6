"""What a worker needs from a session and from a model's plugins.

`Session` is the shape of `edgetpud.runtime.Session` and `edgetpud.hosts.HostSession`,
kept structural so that the workers do not import the TFLite runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy.typing as npt

from edgetpud.messages import Request

Array = npt.NDArray[Any]


class Session(Protocol):
    """What a worker needs from `edgetpud.runtime.Session` (kept structural so this module
    does not import the TFLite runtime)."""

    @property
    def info(self) -> Any: ...

    @property
    def device(self) -> str: ...

    def invoke(self, inputs: Sequence[Array]) -> list[Array]: ...

    def close(self) -> None: ...


# info is an edgetpud.modelfile.ModelInfo; typed Any here for the same reason as Session.
Preprocess = Callable[[Request, Any], list[Array]]
Postprocess = Callable[[list[Array], Request, Any], Any]
