"""How many hypothesis examples a property test runs.

`make test` runs the full counts the issues ask for (2,000 per placement
property, 10,000 per fuzzer). The Debian package build runs the unit tests again
with Debian's python as a smoke test; it sets EDGETPUD_HYPOTHESIS_SCALE (e.g.
0.05) so the package build stays quick.
"""

from __future__ import annotations

import os


def examples(full: int) -> int:
    """`full`, scaled by $EDGETPUD_HYPOTHESIS_SCALE (default 1), never below 20."""
    try:
        scale = float(os.environ.get("EDGETPUD_HYPOTHESIS_SCALE", "1"))
    except ValueError:
        scale = 1.0
    return max(20, int(full * scale))
