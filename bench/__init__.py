"""Benchmarks for im against its peers, run by hand: ``python -m bench --help``.

Nothing here runs in CI or the test suite. Servers run in their own process pinned
to one core; this process is the load generator, pinned to another.
"""
