"""Benchmarks: `python -m benchmarks.<name>`; results are JSON files under benchmarks/results/."""
