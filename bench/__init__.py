"""Benchmarks: each script prints a table; run them from the repository root as ``python -m bench.NAME``."""
