"""Options shared by several built-in plugins."""

from __future__ import annotations

from edgetpud.plugins import Resize
from edgetpud.schema import option

RESIZE_DOC = (
    'How images are fitted to the model input: "stretch" (ignore aspect ratio), '
    '"letterbox" (keep it, pad with black; best for detection) or "center-crop" '
    "(keep it, cut the overhang)."
)


def resize_option(default: Resize = "stretch") -> Resize:
    value: Resize = option(RESIZE_DOC, default)
    return value
