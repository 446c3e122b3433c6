"""Studies that explain the suite's figures (docs/benchmarks.md); `make bench` runs none.

Each runs alone from the repository root: `python -m bench.investigations.<name>`.
"""
