"""Benchmarks: commands that print figures side by side in one run (not tests)."""
