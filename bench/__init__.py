"""Benchmarks and evaluation data generators (run from the repository root)."""
