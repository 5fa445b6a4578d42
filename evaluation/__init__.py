"""Metrics and benchmark runners; every number in docs/BENCHMARKS.md comes from here."""
