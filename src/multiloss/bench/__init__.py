"""Benchmarks: problems with known answers and real offline data, a runner
that trains every balancer on them, and a report."""
