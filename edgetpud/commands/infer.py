"""`edgetpud infer`: not built yet."""

from __future__ import annotations

import argparse
import sys


def main(args: argparse.Namespace) -> int:
    print("edgetpud infer is not implemented in this version yet", file=sys.stderr)
    return 2
