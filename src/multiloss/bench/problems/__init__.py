"""Benchmark problems."""
