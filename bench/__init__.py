"""The benchmark suite: `python -m bench` (bench/__main__.py) runs it; docs/benchmarks.md.

Every module runs from the repository root as `python -m bench.<name>`;
bench/investigations/ holds the studies behind the figures, not run by `make bench`.
"""
