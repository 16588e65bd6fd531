"""Bench-only im plugin: where one broadcast's server time goes.

Loaded by the harness (``im-run --plugin bench.probe_plugin``) with
``BENCH_PROBE_FILE`` set. It triggers nothing (the harness pushes through the
real API); it only times, for the last broadcast, in ms from the ``broadcast``
call: F = the outbox flush began (its first slice) (a frame queued on every connection) and W = its
socket writes done, plus C = connections written. After each such flush it
overwrites the file with one line ``W F C``. Only flushes after a ``broadcast``
call are timed: unicast flushes (one socket each) must not pay for the file write.

With ``BENCH_PROBE_DIR`` instead (``im-run --workers``: a broadcast reaches the other
workers through the broker, not through their ``broadcast``), every worker times
each flush round of at least ``LARGE`` connections and overwrites ``DIR/<pid>`` with
``E C``: E = ``time.perf_counter()`` when its socket writes were done (the machine's
monotonic clock, comparable with the harness's own), C = connections written.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from im_core import hookimpl
from im_core.connection import Outbox

if TYPE_CHECKING:
    from im_core.server import Queued, Server

#: connections a flush round must have to be timed in ``BENCH_PROBE_DIR`` mode
LARGE = 64

_queued_at = [0.0]
_fd = [-1]
_dir_fd = [-1]
_armed = [False]  # a broadcast was called: time the next flush of several sockets
_began = [0.0, 0.0]  # the timed flush: when it began, connections it had


class _TimedOutbox(Outbox):
    """The server's outbox, timing each flush (swapped in at startup, bench only)."""

    __slots__ = ()

    def flush(self) -> None:
        if _dir_fd[0] >= 0:
            self._flush_large()
            return
        if not _armed[0]:
            super().flush()
            return
        if not self._at:  # the first slice of a round
            _began[:] = [time.perf_counter(), self._round_size()]
        super().flush()
        start, n = _began
        if not self._at and n > 1:  # its last slice: stamp again next iteration,
            _armed[0] = False  # after any writes the loop deferred
            self._loop.call_soon(_stamp, start, int(n))

    def _round_size(self) -> int:
        """Connections the round about to begin writes: every one (``buckets``,
        counted without a copy) when broadcasts to everyone wait, else those marked."""
        if self.end != self._stop:
            return len(self._everyone.__self__)  # type: ignore[attr-defined]
        return len(self._dirty)

    def _flush_large(self) -> None:
        if not self._at:
            n = self._round_size()
            _began[:] = [time.perf_counter(), n if n >= LARGE else 0]
        super().flush()
        n = int(_began[1])
        if n and not self._at:
            _began[1] = 0
            self._loop.call_soon(_stamp_end, n)


def _stamp_end(n: int) -> None:
    os.pwrite(_dir_fd[0], f"{time.perf_counter():.6f} {n}\n".ljust(48).encode(), 0)


def _stamp(start: float, n: int) -> None:
    fanout = (start - _queued_at[0]) * 1000
    written = (time.perf_counter() - _queued_at[0]) * 1000
    os.pwrite(_fd[0], f"{written:.3f} {fanout:.3f} {n}\n".ljust(48).encode(), 0)


@hookimpl
def im_startup(server: Server) -> None:
    folder = os.environ.get("BENCH_PROBE_DIR")
    if folder:
        path = os.path.join(folder, str(os.getpid()))
        _dir_fd[0] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        server.outbox.__class__ = _TimedOutbox
        return
    path = os.environ.get("BENCH_PROBE_FILE", "")
    if not path:
        return
    _fd[0] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    server.outbox.__class__ = _TimedOutbox
    broadcast = server.broadcast

    def stamped(payload: bytes, *, ack: bool = False) -> Queued:
        _queued_at[0] = time.perf_counter()
        _armed[0] = True
        return broadcast(payload, ack=ack)

    server.broadcast = stamped  # type: ignore[method-assign]
