"""Bench-only im plugin: a control connection drives the server.

Loaded with ``im-run --plugin bench.trigger_plugin``. The client whose token is
``bench-control`` sends text commands; replies are raw text frames that start
with ``#`` (pushes to the control client are JSON and never do):

    count               -> "#count N"      connected users, the control client included
    burst M SIZE        -> "#queued M"     M broadcasts of SIZE bytes, queued at once
    ackrtt K SIZE       -> "#ackrtt MS..." K pushes with ack to ``bench-acker``, one at a
                                           time; each value is push -> acked hook, in ms
    flushstat           -> "#flush W F C"  the last fan-out, in ms from the broadcast being
                                           queued: W = its socket writes done, F = the
                                           outbox flush began (frames queued on every
                                           connection); C = connections written

This stands in for the HTTP/gRPC push API in the burst scenarios until those land;
the harness calls it through one trigger function (``bench.servers``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from im_core import hookimpl
from im_core.connection import Outbox
from im_core.errors import Busy
from im_core.frames import OP_TEXT, frame

if TYPE_CHECKING:
    from im_core.connection import Connection
    from im_core.server import Server

CONTROL = "bench-control"
ACKER = "bench-acker"
_acked: dict[int, asyncio.Future[float]] = {}


def payload(i: int, size: int) -> bytes:
    """``size`` bytes, distinct per message, same length for every ``i``."""
    return f"{i:08d}".encode().ljust(size, b"x")[:size]


def _reply(conn: Connection, text: str) -> None:
    conn.send(frame(OP_TEXT, text.encode()))


async def _ack_rtt(server: Server, conn: Connection, k: int, size: int) -> None:
    loop = server.loop
    times: list[float] = []
    for i in range(k):
        t0 = time.perf_counter()
        result = await server.push(ACKER, payload(i, size), ack=True)
        if result.missing:
            _reply(conn, "#error acker not online")
            return
        fut = _acked[result.sid] = loop.create_future()
        try:
            times.append((await asyncio.wait_for(fut, 5.0) - t0) * 1000)
        finally:
            _acked.pop(result.sid, None)
    _reply(conn, "#ackrtt " + " ".join(f"{t:.3f}" for t in times))


class _TimedOutbox(Outbox):
    """The server's outbox, timing each flush (swapped in at startup, bench only)."""

    __slots__ = ()

    def flush(self) -> None:
        n, start = len(self._dirty), time.perf_counter()
        super().flush()
        if n > 1:  # stamp again next iteration, after any writes the loop deferred
            _flush[0] = start
            self._loop.call_soon(_stamp, n)


_flush: list[float] = [0.0, 0.0, 0]  # flush began, writes done, connections


def _stamp(n: int) -> None:
    _flush[1:] = [time.perf_counter(), n]


_queued_at = [0.0]


@hookimpl
def im_startup(server: Server) -> None:
    server.outbox.__class__ = _TimedOutbox


@hookimpl
async def im_receive(server: Server, conn: Connection, data: bytes) -> None:
    if conn.user_id != CONTROL:
        return
    cmd, *args = data.decode().split()
    if cmd == "count":
        _reply(conn, f"#count {server.local_count()}")
    elif cmd == "flushstat":
        fanout, written = ((t - _queued_at[0]) * 1000 for t in _flush[:2])
        _reply(conn, f"#flush {written:.3f} {fanout:.3f} {_flush[2]}")
    elif cmd == "burst":
        m, size = int(args[0]), int(args[1])
        _queued_at[0] = time.perf_counter()
        for i in range(m):
            while True:
                try:
                    server.broadcast(payload(i, size))
                    break
                except Busy:  # more than the broadcast queue holds: let it drain
                    await asyncio.sleep(0.001)
        _reply(conn, f"#queued {m}")
    elif cmd == "ackrtt":
        server.spawn(_ack_rtt(server, conn, int(args[0]), int(args[1])))


@hookimpl
def im_acked(server: Server, user_id: str, sid: int) -> None:
    fut = _acked.get(sid)
    if fut is not None and not fut.done():
        fut.set_result(time.perf_counter())
