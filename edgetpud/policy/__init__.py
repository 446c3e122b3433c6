"""The daemon's rules as pure functions: no threads, no I/O, time passed in.

`trust` (which devices placement may use), `admission` (whether a request is
taken), `reload` (what a new config changes). They import only config
dataclasses, device records, messages, errors and the standard library (an
import-linter contract in pyproject.toml); tests/unit/test_policy_*.py are tables.
"""
