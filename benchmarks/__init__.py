"""Benchmark scripts: each prints the machine it ran on, then its figures (run them, they are not tests)."""
