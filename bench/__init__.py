"""Benchmarks: each writes its figures to results/bench/ (rerun the module to regenerate them)."""
