"""A WebSocket after its upgrade: a lean asyncio Protocol (RFC 6455, server side).

``front.FrontProtocol`` (or, for upgrades later on a keep-alive connection, the
aiohttp route) parses the upgrade request and runs the validate hook;
``upgrade.switch`` then answers ``101`` and moves the socket to a ``WsProtocol``
with ``transport.set_protocol``. From then on no aiohttp request, response,
reader or task exists per connection: an idle connection is this object, its
``Connection`` and the transport. Writes go straight to the transport
(``im_core.connection``); this class reads client frames: masked
text/binary/continuation, ping, pong, close.

Bounded per connection: a message's bytes (``max_frame_size``, counted as
fragments arrive, in linear time) and fragments (``max_fragments``), frames per
second (``max_inbound_rate``), bytes held before the core registered the
connection, and messages waiting for ``im_receive`` (reading pauses). Text
messages are checked for UTF-8 as they arrive (fragment by fragment).

Every data message that arrived before a close, a protocol error or a lost
socket goes to ``server.connections.on_frame`` in order; ``close`` returns the task doing
that, so the core runs the disconnect hook after it.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from im_core import CloseCode

from .frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, close_frame, frame
from .gate import UNCOUNTED

if TYPE_CHECKING:
    from im_core.connection import Connection

    from .front import Edge

log = logging.getLogger("im.http")

OP_CONTINUATION = 0x0
# Close codes a client may send (RFC 6455 7.4): the defined ones and 3000-4999.
_CLIENT_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))
CLOSE_TIMEOUT = 2.0  # how long a closing server waits for the client's close frame
INBOX_HIGH = 64  # messages waiting for the receive hook before reading pauses
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class _Fail(Exception):
    """A client frame that breaks the protocol or a limit: close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def unmask(mask: bytes, data: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask``, as one big-integer operation."""
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class WsProtocol(asyncio.Protocol):
    """Reads one client's frames and owns its close handshake.

    Lifecycle: created at the upgrade (frames are buffered), ``start(conn)`` once the
    core registered the connection, then messages go to ``server.connections.on_frame`` in order.
    """

    __slots__ = (
        "_after",
        "_buf",
        "_closing",
        "_count",
        "_drain",
        "_edge",
        "_frag",
        "_frag_size",
        "_gate_key",
        "_inbox",
        "_lost",
        "_skip",
        "_text",
        "_timer",
        "_window",
        "conn",
        "transport",
    )

    def __init__(self, edge: Edge, transport: asyncio.Transport, gate_key: object) -> None:
        self._edge = edge
        self.transport = transport
        self.conn: Connection | None = None
        self._gate_key = gate_key  # released at the gate when the socket closes
        self._buf = b""
        self._skip = 0
        self._frag: list[bytes] | None = None  # fragments of the message being received
        self._frag_size = 0
        self._text: Any = None  # UTF-8 decoder of a fragmented text message
        self._inbox: deque[tuple[bytes, bool]] | None = None
        self._drain: asyncio.Task[None] | None = None
        # The end of the connection (a close frame, a protocol error), held back until
        # the messages before it are handed over: their answers go out before it.
        self._after: Callable[[], None] | None = None
        self._closing = False  # our close frame is sent: only the client's close matters
        self._lost = False
        self._timer: asyncio.TimerHandle | None = None
        self._window = 0.0  # start of the current one-second rate window
        self._count = 0  # frames in it

    # -- lifecycle -------------------------------------------------------------

    def start(self, conn: Connection) -> None:
        """The core registered ``conn``: read what arrived meanwhile, then go on."""
        self.conn = conn
        if self._buf:
            buffered, self._buf = self._buf, b""
            self.data_received(buffered)
        if self._lost:
            conn.close(CloseCode.NORMAL, "closed by client")
        elif not self._closing and not self.transport.is_reading():
            self.transport.resume_reading()

    def close(self, code: int, reason: str) -> asyncio.Task[None] | None:
        """Server-side close (the connection's closer): send close, await the client's.

        A slow consumer is reset instead: its close frame would sit behind the
        backlog it does not read. Returns the task still handing received messages
        to the core, if any.
        """
        if not (self._closing or self._lost):
            self._closing = True
            transport = self.transport
            if code == CloseCode.SLOW_CONSUMER:
                transport.abort()
            else:
                transport.write(close_frame(code, reason))
                self._timer = self._edge.server.loop.call_later(CLOSE_TIMEOUT, self._give_up)
        return self._drain

    def abandon(self) -> None:
        """The core could not register the connection: close it as a server error."""
        if not (self._closing or self._lost):
            self._closing = True
            self.transport.write(close_frame(CloseCode.INTERNAL_ERROR, "internal error"))
            self.transport.close()

    def _give_up(self) -> None:
        """No close frame came back in time: hang up, dropping what the peer won't read."""
        transport = self.transport
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
        key, self._gate_key = self._gate_key, UNCOUNTED
        if key is not UNCOUNTED:
            self._edge.gate.leave(key)  # type: ignore[arg-type]
        conn = self.conn
        if conn is not None and not conn.closed:
            conn.close(CloseCode.NORMAL, "closed by client")

    # -- reading ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._after is not None:
            return  # the connection ends once the messages before are handed over
        if self._buf:
            data = self._buf + data
            self._buf = b""
        conn = self.conn
        if conn is None:  # still registering: keep it for start(), within bounds
            self._buf = data
            if len(data) > self._edge.options.max_frame_size + 14:
                self.transport.pause_reading()  # start() resumes
            return
        try:
            used = self._parse(data, conn)
        except _Fail as fail:
            self._buf = b""
            if self._closing:  # broken again while closing: stop waiting
                self.transport.close()
            else:
                self._end(functools.partial(self._fail, fail))
            return
        if used < len(data):
            self._buf = data[used:]

    def _end(self, end: Callable[[], None]) -> None:
        """End the connection now, or once the messages before are handed over."""
        if self._drain is None:
            end()
        else:
            self._after = end
            self._buf = b""
            self.transport.pause_reading()

    def _fail(self, fail: _Fail) -> None:
        """Fail the connection (RFC 6455 7.1.7): our close frame, then hang up. What
        the client sent after the failing frame was not read (it may not even be
        framed), so its close could not be told apart: waiting for it would only
        hold the socket."""
        assert self.conn is not None
        self.conn.close(fail.code, str(fail))  # -> self.close(): the close frame
        self.transport.close()  # after the buffered close frame is written

    def _parse(self, data: bytes, conn: Connection) -> int:
        """Handle every whole frame in ``data``; return the bytes consumed."""
        opts = self._edge.options
        n = len(data)
        pos = 0
        if self._skip:  # the rest of an oversized frame: drop it unread
            pos = min(self._skip, n)
            self._skip -= pos
        now = self._edge.server.loop.time()
        rate = opts.max_inbound_rate
        if rate and now - self._window >= 1.0:
            self._window, self._count = now, 0
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            opcode, length = b0 & 0x0F, b1 & 0x7F
            head = pos + 2
            if length == 126:
                if n - head < 2:
                    break
                length = int.from_bytes(data[head : head + 2], "big")
                head += 2
            elif length == 127:
                if n - head < 8:
                    break
                length = int.from_bytes(data[head : head + 8], "big")
                head += 8
            end = head + 4 + length
            if b0 & 0x70:
                raise _Fail(CloseCode.PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise _Fail(CloseCode.PROTOCOL_ERROR, "client frame not masked")
            if opcode >= 0x8:
                if not b0 & 0x80 or length > 125:
                    raise _Fail(CloseCode.PROTOCOL_ERROR, "bad control frame")
            elif length + (self._frag_size if opcode == OP_CONTINUATION else 0) > (
                opts.max_frame_size
            ):
                self._skip = max(0, end - n)
                self._frag = self._text = None
                if self._closing:
                    pos = min(end, n)
                    continue
                raise _Fail(CloseCode.MESSAGE_TOO_BIG, "message over max_frame_size")
            if end > n:
                break
            if rate:
                self._count += 1
                if self._count > rate:
                    raise _Fail(CloseCode.TOO_MANY_FRAMES, "too many frames per second")
            payload = unmask(data[head : head + 4], data[head + 4 : end])
            pos = end
            conn.last_seen = now
            if self._closing:
                if opcode == OP_CLOSE:
                    self.transport.close()
                    return n
                continue  # after our close frame only the client's close matters
            self._frame(opcode, bool(b0 & 0x80), payload)
            if self._after is not None:  # a close frame: nothing after it counts
                return n
        return pos

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if self._frag is not None:
                raise _Fail(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
            text = opcode == OP_TEXT
            if fin:
                if text:
                    _check_utf8(payload)
                self._deliver(payload, not text)
                return
            self._frag, self._frag_size = [payload], len(payload)
            if text:
                self._text = _utf8_decoder()
                _feed_utf8(self._text, payload, False)
        elif opcode == OP_CONTINUATION:
            frag = self._frag
            if frag is None:
                raise _Fail(CloseCode.PROTOCOL_ERROR, "continuation without a message")
            if len(frag) >= self._edge.options.max_fragments:
                raise _Fail(CloseCode.MESSAGE_TOO_BIG, "message in too many fragments")
            frag.append(payload)
            self._frag_size += len(payload)
            text = self._text
            if text is not None:
                _feed_utf8(text, payload, fin)
            if fin:
                self._frag, self._text, self._frag_size = None, None, 0
                self._deliver(b"".join(frag), text is None)
        elif opcode == OP_PING:
            transport = self.transport
            # A client that pings but does not read gets no more pongs than fit.
            if transport.get_write_buffer_size() < self._edge.server.options.client_buffer_bytes:
                transport.write(frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            pass  # liveness is already refreshed
        elif opcode == OP_CLOSE:
            self._end(functools.partial(self._answer_close, _close_code(payload)))
        else:
            raise _Fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")

    def _answer_close(self, code: int) -> None:
        """Echo the client's close code and hang up (the server closes TCP first); the
        connection closes with the client's code. Frames already queued for the
        socket (pushes answered as delivered) go out before the echo: no data frame
        may follow a close frame (RFC 6455 5.5.1)."""
        self._closing = True
        transport = self.transport
        assert self.conn is not None
        self.conn.flush()
        transport.write(close_frame(code))
        self.conn.close(code, "closed by client")
        transport.close()

    # -- handing data messages to the core in order ----------------------------

    def _deliver(self, data: bytes, binary: bool) -> None:
        inbox = self._inbox
        if inbox is not None:  # a drain task is running: keep the order
            inbox.append((data, binary))
            if len(inbox) == INBOX_HIGH:
                self.transport.pause_reading()
            return
        self._inbox = deque(((data, binary),))
        self._drain = self._edge.server.spawn(self._drain_inbox())

    async def _drain_inbox(self) -> None:
        inbox, conn = self._inbox, self.conn
        assert inbox is not None and conn is not None
        on_frame = self._edge.server.connections.on_frame
        try:
            while inbox:
                paused = len(inbox) >= INBOX_HIGH
                data, binary = inbox.popleft()
                await on_frame(conn, data, binary)
                if paused and len(inbox) < INBOX_HIGH and not self._lost and not self._after:
                    self.transport.resume_reading()
        except Exception:
            log.exception("receive hook failed for %r", conn)
            conn.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._inbox = None
            self._drain = None
            end, self._after = self._after, None
            if end is not None and not conn.closed and not self._lost:
                self.transport.resume_reading()  # for the client's answer to our close
                end()


def _close_code(payload: bytes) -> int:
    """The code of a client's close frame; a malformed one fails the connection."""
    if not payload:
        return CloseCode.NORMAL
    if len(payload) == 1:
        raise _Fail(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte body")
    code = int.from_bytes(payload[:2], "big")
    if (code < 3000 and code not in _CLIENT_CODES) or code >= 5000:
        raise _Fail(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise _Fail(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None
    return code


def _check_utf8(payload: bytes) -> None:
    try:
        payload.decode()
    except UnicodeDecodeError:
        raise _Fail(CloseCode.INVALID_DATA, "text message is not UTF-8") from None


def _feed_utf8(decoder: Any, payload: bytes, final: bool) -> None:
    """Check a text fragment as it arrives: an invalid byte fails at once."""
    try:
        decoder.decode(payload, final)
    except UnicodeDecodeError:
        raise _Fail(CloseCode.INVALID_DATA, "text message is not UTF-8") from None
