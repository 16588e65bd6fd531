"""One user connection: identity, tags, send queue, liveness and the one close path.

A connection does no I/O of its own and owns no task. Fan-out calls ``send`` with
prepared frame bytes; frames queue in a list and the server's outbox writes each
connection's queue in one ``transport.write`` per loop iteration (write coalescing).
The transport plugin that accepted the socket reads it and calls ``server.connections.on_frame``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Protocol

from .errors import CloseCode

if TYPE_CHECKING:
    from .ack import Unacked
    from .codec import Codec
    from .metrics import Histogram
    from .transport import Framing


class Writer(Protocol):
    """The part of an ``asyncio.Transport`` a connection writes through."""

    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...


#: Closes the transport with a close code and reason. It may return an awaitable
#: that completes once every message the client sent before the close was handed
#: to ``server.connections.on_frame`` (the disconnect hook waits for it), or None.
Closer = Callable[[int, str], "Awaitable[Any] | None"]


class Format:
    """A (codec, frame kind, framing) triple: connections sharing one share every
    prepared message, so a broadcast is encoded and framed once per format."""

    __slots__ = ("binary", "codec", "framing")

    def __init__(self, codec: Codec, binary: bool, framing: Framing) -> None:
        self.codec = codec
        self.binary = binary
        self.framing = framing

    def build(self, sid: int, payload: bytes) -> bytes:
        return self.framing.message(self.codec.encode_push(sid, payload), self.binary, sid)

    def __repr__(self) -> str:
        kind = "binary" if self.binary else "text"
        return f"Format({self.codec.name}, {kind}, {self.framing.name})"


#: The tags of a connection that has none: shared, so an untagged connection holds
#: no set of its own (``TagIndex.add`` gives it one).
NO_TAGS: frozenset[str] = frozenset()


class Connection:
    __slots__ = (
        "__weakref__",
        "_buffered",
        "_closer",
        "_on_close",
        "_outbox",
        "_pending",
        "_seq",
        "_stuck",
        "_transport",
        "close_code",
        "close_reason",
        "closed",
        "conn_id",
        "connected_at",
        "device",
        "fmt",
        "holding",
        "last_seen",
        "limit_bytes",
        "limit_frames",
        "meta",
        "remote",
        "tags",
        "user_id",
    )

    def __init__(
        self,
        *,
        conn_id: str,
        user_id: str,
        tags: AbstractSet[str],
        meta: dict[str, Any],
        fmt: Format,
        transport: Writer,
        closer: Closer,
        outbox: Outbox,
        on_close: Callable[[Connection, int, str, Awaitable[Any] | None], None],
        now: float,
        limit_frames: int,
        limit_bytes: int,
        remote: str | None = None,
        device: str = "",
    ) -> None:
        self.conn_id = conn_id
        self.user_id = user_id
        self.device = device  # "" unless several devices per user are allowed
        self.tags = tags
        self.meta = meta
        self.fmt = fmt
        self.remote = remote
        self.connected_at = time.time()
        self.last_seen = now
        self.closed = False
        self.close_code = 0
        self.close_reason = ""
        self.limit_frames = limit_frames
        self.limit_bytes = limit_bytes
        self._transport = transport
        self._closer = closer
        self._outbox = outbox
        self._on_close = on_close
        # () until a frame is queued: an idle connection holds no list of its own
        self._pending: list[bytes] | tuple[()] = ()
        # Broadcasts to everyone are queued once in the outbox, not here: this is the
        # first of them this connection has not taken (written or moved to _pending).
        self._seq = outbox.end
        # While set up (``hold``), frames queue but are not written: what the user
        # missed goes out first (``release``).
        self.holding = False
        self._stuck = 0
        self._buffered = 0  # the transport's unsent bytes when this round of frames began

    def __repr__(self) -> str:
        return f"<Connection {self.user_id!r} {self.conn_id} {self.fmt!r}>"

    # -- sending -------------------------------------------------------------

    def send(self, frame: bytes) -> bool:
        """Queue one prepared frame without blocking; False if it will not be delivered.

        A connection whose socket is congested (the transport holds unsent bytes) may
        keep ``limit_frames`` frames / ``limit_bytes`` bytes back; past that it is
        closed as a slow consumer rather than slowing the sender down.
        """
        if self.closed:
            return False
        if self._seq != self._outbox.end:  # broadcasts queued before this frame go first
            self._take_shared()
        pending = self._pending
        if pending:  # nothing was written since the first frame: reuse its look
            buffered = self._buffered
        else:
            buffered = self._buffered = self._transport.get_write_buffer_size()
        if buffered and (
            self._stuck + len(pending) >= self.limit_frames
            or buffered + len(frame) > self.limit_bytes
        ):
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")
            return False
        if pending:
            pending.append(frame)
            return True
        self._pending = [frame]
        if not self.holding:
            self._outbox.mark(self)
        return True

    def _take_shared(self) -> None:
        """Move the broadcasts to everyone this connection is owed into ``_pending``."""
        outbox = self._outbox
        owed = outbox.owed(self)
        if not owed:
            return
        if self._pending:
            self._pending.extend(owed)
            return
        self._buffered = self._transport.get_write_buffer_size()
        self._pending = owed
        if not self.holding:
            outbox.mark(self)

    def resend(self, entry: Unacked) -> bool:
        """Send an unacked entry again (its sid and payload)."""
        return self.send(self.fmt.build(entry.sid, entry.payload))

    def hold(self) -> None:
        """Queue frames without writing them until ``release``."""
        self.holding = True

    def release(self, first: list[bytes]) -> None:
        """Write ``first``, then every frame queued while holding."""
        self.holding = False
        if self.closed:
            return
        if self._seq != self._outbox.end:
            self._take_shared()
        if first:
            if not self._pending:
                self._buffered = self._transport.get_write_buffer_size()
            self._pending = [*first, *self._pending]
        if self._pending:
            self._outbox.mark(self)

    def flush(self) -> None:
        """Write every queued frame now, in one call (a close path: the outbox
        writes through ``_write``)."""
        if self._seq != self._outbox.end and not self.closed:
            self._take_shared()
        frames = len(self._pending)
        written = self._write()
        if written:
            outbox = self._outbox
            outbox.frames += frames
            outbox.bytes += written

    def _write(self) -> int:
        """Write every queued frame in one call; return the bytes written."""
        pending = self._pending
        if not pending or self.closed:
            return 0
        self._pending = ()
        if not self._buffered:
            self._stuck = 0
        transport = self._transport
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        transport.write(data)
        if transport.get_write_buffer_size():
            self._stuck += len(pending)
        return len(data)

    def _write_shared(self, data: bytes, count: int) -> int:
        """Write ``count`` frames of broadcasts to everyone, joined in ``data`` (shared
        by every connection of this format); the slow-consumer limits apply as in
        ``send``. Return the bytes written."""
        transport = self._transport
        buffered = transport.get_write_buffer_size()
        if buffered:
            if self._stuck + count > self.limit_frames or buffered + len(data) > self.limit_bytes:
                self.close(CloseCode.SLOW_CONSUMER, "slow consumer")
                return 0
        else:
            self._stuck = 0
        transport.write(data)
        if transport.get_write_buffer_size():
            self._stuck += count
        return len(data)

    def reply(self, data: bytes, *, binary: bool | None = None) -> bool:
        """Send ``data`` to this client alone as a push without ack (sid 0), in a
        binary (``binary=True``) or text frame (``False``; ``None``: the
        connection's own kind). Answers in the kind a message came in:
        ``conn.reply(data, binary=binary)`` from ``im_receive``. False if it will
        not be delivered (closed, or closed now as a slow consumer)."""
        fmt = self.fmt
        if binary is None:
            binary = fmt.binary
        elif not binary and not fmt.codec.text_safe:
            raise ValueError(f"codec {fmt.codec.name!r} needs binary frames")
        return self.send(fmt.framing.message(fmt.codec.encode_push(0, data), binary, 0))

    def probe(self) -> None:
        """Ask a silent client for a sign of life (its transport's probe: a WebSocket
        ping), straight away, bypassing the queue."""
        if not self.closed:
            self._transport.write(self.fmt.framing.probe)

    # -- liveness and closing ------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """The one close path: every disconnect, from any side, ends here once."""
        if self.closed:
            return
        if code != CloseCode.SLOW_CONSUMER:
            self.flush()
        self.closed = True
        self.close_code = int(code)
        self.close_reason = reason
        self._pending = ()
        received = None
        try:
            received = self._closer(int(code), reason)
        finally:
            self._on_close(self, int(code), reason, received)


class Outbox:
    """Connections with queued frames, written one ``transport.write`` each.

    Marking costs one list append; one scheduled flush serves however many
    connections and frames were queued, so a burst of pushes reaches each socket as
    one write. A round of writes starts on the next loop iteration, or ``delay``
    seconds after the first frame of the round was queued (``--write-delay``: one
    shared timer per round, not one per connection). It writes at most
    ``slice_size`` connections per loop iteration, fewer once ``budget`` seconds
    have passed (read every 8 connections), and yields between slices, so a
    broadcast to many connections does not hold API calls and unicast pushes back
    for the whole fan-out. Frames queued during a round for a connection it already
    wrote wait for the next one, which with a delay starts that long after the round
    ends: each connection is written at most once per round. A connection passed to
    ``expedite`` goes first at the next slice: its queued frames, in order, in one
    write.

    Broadcasts to everyone (``everyone``) are not queued per connection: the outbox
    keeps them once, numbered, and the next round writes every connection; the
    connections that owe exactly the round's broadcasts (nearly all) get one bytes
    object per format, built and joined once. A connection remembers the first
    broadcast it has not taken (``Connection._seq``); anything else queued for it
    takes the broadcasts before it into its own queue first, so its frames keep
    their order.

    It also counts what it writes (``frames``, ``bytes``: read through
    ``server.metrics``) and times one push per round: the oldest push whose frames
    it writes (``since``, set by ``LocalNode.deliver`` while a round is
    ``scheduled``), from the push call to the end of the round's socket writes.
    """

    __slots__ = (
        "_at",
        "_base",
        "_budget",
        "_built",
        "_delay",
        "_dirty",
        "_everyone",
        "_items",
        "_joined",
        "_loop",
        "_round",
        "_slice",
        "_stop",
        "_urgent",
        "bytes",
        "end",
        "frames",
        "latency",
        "scheduled",
        "since",
    )

    def __init__(
        self,
        loop: Any,
        *,
        delay: float = 0.0,
        slice_size: int = 100,
        budget: float = 0.0001,
        everyone: Callable[[], Iterable[Connection]] = tuple,
    ) -> None:
        self._loop = loop
        self._delay = delay
        self._slice = slice_size
        self._budget = budget
        self._everyone = everyone
        self._dirty: list[Connection] = []  # marked since the round began
        self._round: list[Connection] = []  # the round being written
        self._at = 0  # where its next slice starts
        self._urgent: list[Connection] = []
        # Broadcasts to everyone not yet written to every connection: (sid, payload),
        # numbered from _base; end = the next number. A round writes those below _stop.
        self._items: list[tuple[int, bytes]] = []
        self._base = 0
        self._stop = 0
        self.end = 0
        self._built: dict[Format, list[bytes]] = {}  # their frames per format, from _base
        self._joined: dict[Format, bytes] = {}  # the round's frames per format, joined
        self.scheduled = False
        self.frames = 0
        self.bytes = 0
        self.since = 0.0  # perf_counter() of the oldest push waiting for this round
        self.latency: Histogram | None = None

    def mark(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self.scheduled:
            self.scheduled = True
            self._schedule()

    def everyone(self, sid: int, payload: bytes) -> None:
        """Queue a push (no ack) for every connection, built once per format."""
        self._items.append((sid, payload))
        self.end += 1
        if not self.scheduled:
            self.scheduled = True
            self._schedule()

    def owed(self, conn: Connection) -> list[bytes]:
        """The frames of the broadcasts ``conn`` has not taken; it takes them now."""
        seq = max(conn._seq, self._base)
        conn._seq = end = self.end
        return self._frames(conn.fmt, end)[seq - self._base :]

    def _frames(self, fmt: Format, stop: int) -> list[bytes]:
        """The frames in ``fmt`` of the broadcasts from ``_base`` below ``stop``."""
        built = self._built.get(fmt)
        if built is None:
            built = self._built[fmt] = []
        need = stop - self._base
        if len(built) < need:
            build = fmt.build
            built.extend(build(sid, payload) for sid, payload in self._items[len(built) : need])
        return built[:need]

    def _schedule(self) -> None:
        if self._delay:
            self._loop.call_later(self._delay, self.flush)
        else:
            self._loop.call_soon(self.flush)

    @property
    def backlog(self) -> bool:
        """Whether a round is being written with more slices to go (a slice may end
        early on the time budget, so any connection left counts)."""
        return self._at < len(self._round)

    def expedite(self, conn: Connection) -> None:
        """Write ``conn`` at the next slice, ahead of the round being written."""
        self._urgent.append(conn)

    def flush(self) -> None:
        if not self._at:  # a new round: what was marked until now
            if self.end != self._stop:  # and broadcasts to everyone: every connection
                self._stop = self.end
                self._round = list(self._everyone())
                self._dirty = []
            else:
                self._round, self._dirty = self._dirty, []
        run, start = self._round, self._at
        if self._urgent:
            urgent, self._urgent = self._urgent, []
            self._write(urgent, 0, len(urgent), math.inf)
        write = self._write_shared if self._stop != self._base else self._write
        deadline = time.perf_counter() + self._budget
        end = write(run, start, min(len(run), start + self._slice), deadline)
        if end < len(run):  # the rest on the next iteration
            self._at = end
            self._loop.call_soon(self.flush)
            return
        self._round, self._at = [], 0
        if self._stop != self._base:  # every connection has taken them
            self._drop_written()
        if self._dirty or self.end != self._stop:  # queued during the round: the next
            self._schedule()
        else:
            self.scheduled = False
        if self.since:
            if self.latency is not None:
                self.latency.observe(time.perf_counter() - self.since)
            self.since = 0.0

    def _drop_written(self) -> None:
        done = self._stop - self._base
        del self._items[:done]
        for built in self._built.values():
            del built[:done]
        self._base = self._stop
        self._joined = {}

    def _write(self, conns: list[Connection], i: int, stop: int, deadline: float) -> int:
        """Write ``conns[i:stop]`` until ``deadline``; return where it stopped."""
        frames = written = 0  # counted here, in locals: one add per connection
        clock = time.perf_counter
        while i < stop:
            conn = conns[i]
            i += 1
            try:
                frames += len(conn._pending)
                written += conn._write()
            except Exception as exc:  # a broken transport closes only its own connection
                conn.close(CloseCode.INTERNAL_ERROR, f"write failed: {exc}"[:120])
            if not i & 7 and clock() > deadline:
                break
        self.frames += frames
        self.bytes += written
        return i

    def _write_shared(self, conns: list[Connection], i: int, stop: int, deadline: float) -> int:
        """``_write`` for a round with broadcasts to everyone (numbers below _stop)."""
        frames = written = 0
        base, last, count = self._base, self._stop, self._stop - self._base
        joined = self._joined
        clock = time.perf_counter
        while i < stop:
            conn = conns[i]
            i += 1
            if not i & 7 and clock() > deadline:
                stop = i  # this one, then yield
            try:
                if conn.closed:
                    continue
                if conn._seq >= last:  # took them already: only its own frames, if any
                    if conn._pending and not conn.holding:
                        frames += len(conn._pending)
                        written += conn._write()
                    continue
                if conn._pending or conn.holding or conn._seq > base:
                    conn._take_shared()  # behind its own frames, or it is being set up
                    if not conn.holding:
                        frames += len(conn._pending)
                        written += conn._write()
                    continue
                conn._seq = last
                fmt = conn.fmt
                data = joined.get(fmt)
                if data is None:
                    data = joined[fmt] = b"".join(self._frames(fmt, last))
                n = conn._write_shared(data, count)
                if n:
                    written += n
                    frames += count
            except Exception as exc:  # a broken transport closes only its own connection
                conn.close(CloseCode.INTERNAL_ERROR, f"write failed: {exc}"[:120])
        self.frames += frames
        self.bytes += written
        return i
