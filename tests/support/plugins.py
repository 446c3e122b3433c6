"""Helpers for plugin tests: run one request through preprocess → model → postprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetpud import modelfile, plugins, runtime
from edgetpud.labels import Labels
from edgetpud.messages import Request
from edgetpud.plugins import Resize
from edgetpud.preprocess import make_preprocess
from edgetpud.schema import Context, load_table


def plugin_config(kind: str, name: str, **options: Any) -> Any:
    """A plugin's validated Config from TOML-like options (fails the test on errors)."""
    cls = plugins.registry().get(kind, name)
    ctx = Context()
    config = load_table(cls.Config, options, f"models.test.{kind}", ctx)
    assert config is not None, ctx.issues
    return config


class Pipeline:
    """One model on the CPU with a postprocessor: what a worker does per request."""

    def __init__(
        self,
        model: Path,
        post: str,
        labels: Labels | None = None,
        resize: Resize = "stretch",
        **options: Any,
    ) -> None:
        self.info = modelfile.inspect_model(model)
        self.session = runtime.open_session(model, "cpu", info=self.info)
        cls = plugins.registry().get("postprocess", post)
        self.post = cls(plugin_config("postprocess", post, **options), self.info, labels)  # type: ignore[call-arg]
        self.preprocess = make_preprocess(resize)

    def __call__(self, payload: Any, kind: str = "image") -> Any:
        request = Request("test", payload, kind)  # type: ignore[arg-type]
        inputs = self.preprocess(request, self.info)
        outputs = self.session.invoke(inputs)
        return self.post.process(outputs, request)  # type: ignore[attr-defined]
