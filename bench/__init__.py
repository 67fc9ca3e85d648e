"""Benchmarks: each prints a table and writes JSON (python -m bench.accuracy | bench.speed | bench.daemon)."""
