"""The Frigate endpoint as a daemon component (edgetpud/daemon/ports.py `Component`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from edgetpud import modelfile
from edgetpud.config import Config
from edgetpud.daemon.events import Publish
from edgetpud.daemon.ports import ComponentContext
from edgetpud.errors import EdgetpudError
from edgetpud.frigate.endpoint import FrigateEndpoint
from edgetpud.frigate.port import DaemonPort
from edgetpud.frigate.router import FrigateError

log = logging.getLogger(__name__)


class FrigateComponent:
    """Started after the models, restarted when a reload changes `[frigate]` or its
    model's file, its snapshot the health section "frigate", its events published
    through the supervisor."""

    name = "frigate"

    def __init__(self, cfg: Config, ctx: ComponentContext) -> None:
        self._cfg = cfg
        self._ctx = ctx
        self._endpoint: FrigateEndpoint | None = None
        self._key: tuple[Any, ...] = ()

    def _wanted(self, cfg: Config) -> tuple[Any, ...]:
        f = cfg.frigate
        if not f.endpoint:
            return ()
        model = cfg.models.get(f.model)
        return (f, model.model if model is not None else None)

    def start(self) -> None:
        key = self._wanted(self._cfg)
        self._key = key
        if not key:
            return
        f = self._cfg.frigate
        model = self._cfg.models.get(f.model)
        try:
            info = modelfile.inspect_model(model.model) if model is not None else None
        except EdgetpudError as exc:
            log.error("Frigate endpoint: model %s cannot be read: %s", f.model, exc)
            info = None
        port = DaemonPort(f.model, info, self._ctx.view.latest, self._ctx.submit)
        endpoint = FrigateEndpoint(f, port, on_event=self._post)
        self._endpoint = endpoint
        try:
            endpoint.start()
        except FrigateError as exc:
            log.error("Frigate endpoint off: %s", exc)
            self._post("frigate_failed", {"endpoint": f.endpoint, "error": str(exc)})

    def _post(self, kind: str, fields: Mapping[str, Any]) -> None:
        self._ctx.post(Publish(kind, dict(fields)))

    def apply_config(self, cfg: Config) -> None:
        self._cfg = cfg
        if self._wanted(cfg) == self._key:
            return
        self.stop(time.monotonic() + 2.0)
        self.start()

    def health(self) -> Mapping[str, Any] | None:
        return self._endpoint.snapshot() if self._endpoint is not None else None

    def stop(self, deadline: float) -> None:
        if self._endpoint is not None:
            self._endpoint.close(max(0.1, deadline - time.monotonic()))
            self._endpoint = None
