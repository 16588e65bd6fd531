"""Peer servers for the benchmarks: the same control commands as
``bench.trigger_plugin`` (``count``, ``burst M SIZE``) on ``/control``."""
