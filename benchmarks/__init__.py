"""Benchmarks: reported numbers, never timed tests."""
