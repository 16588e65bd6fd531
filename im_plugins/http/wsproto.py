"""A WebSocket after its upgrade: a lean asyncio Protocol (RFC 6455, server side).

``front.FrontProtocol`` (or, for requests it hands on, the aiohttp route) parses the
upgrade request and runs the validate hook; ``websocket.switch`` then answers ``101``
and moves the socket to a ``WsProtocol`` with ``transport.set_protocol``. From then
on no aiohttp request, response, reader or task exists per connection: an idle
connection is this object, its ``Connection`` and the transport. Writes go straight
to the transport (``im_core.connection``); this class reads client frames: masked
text/binary/continuation, ping, pong, close.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from im_core import CloseCode
from im_core.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, close_frame, frame

if TYPE_CHECKING:
    from im_core.connection import Connection
    from im_core.server import Server

log = logging.getLogger("im.http")

OP_CONTINUATION = 0x0
PROTOCOL_ERROR = 1002
INVALID_TEXT = 1007
# Close codes a client may send (RFC 6455 7.4): the defined ones and 3000-4999.
_CLIENT_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))
CLOSE_TIMEOUT = 2.0  # how long a closing server waits for the client's close frame
INBOX_HIGH = 64  # frames waiting for the receive hook before reading pauses


class _Fail(Exception):
    """A client frame that breaks the protocol: close with ``code``."""

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
    core registered the connection, then frames go to ``server.on_frame`` in order.
    """

    __slots__ = (
        "_buf",
        "_closing",
        "_frag",
        "_frag_op",
        "_inbox",
        "_lost",
        "_max",
        "_skip",
        "_timer",
        "conn",
        "server",
        "transport",
    )

    def __init__(self, server: Server, transport: asyncio.Transport, max_size: int) -> None:
        self.server = server
        self.transport = transport
        self.conn: Connection | None = None
        self._max = max_size
        self._buf = b""
        self._skip = 0
        self._frag: list[bytes] | None = None
        self._frag_op = 0
        self._inbox: deque[bytes] | None = None
        self._closing = False  # our close frame is sent: only the client's close matters
        self._lost = False
        self._timer: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self, conn: Connection) -> None:
        """The core registered ``conn``: read what arrived meanwhile, then go on."""
        self.conn = conn
        if self._lost:
            conn.close(CloseCode.NORMAL, "closed by client")
        elif self._buf:
            buffered, self._buf = self._buf, b""
            self.data_received(buffered)

    def close(self, code: int, reason: str) -> None:
        """Server-side close (the connection's closer): send close, await the client's."""
        if self._closing or self._lost:
            return
        self._closing = True
        transport = self.transport
        transport.write(close_frame(code, reason))
        self._timer = self.server.loop.call_later(CLOSE_TIMEOUT, self._give_up)

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
        conn = self.conn
        if conn is not None and not conn.closed:
            conn.close(CloseCode.NORMAL, "closed by client")

    # -- reading ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if self.conn is None:  # still registering: keep it for start()
            self._buf = data
            return
        try:
            used = self._parse(data)
        except _Fail as fail:
            self._buf = b""
            if self._closing:  # broken again while closing: stop waiting
                self.transport.close()
            else:  # -> Connection.close -> self.close(): close frame, wait for the client
                self.conn.close(fail.code, str(fail))
            return
        if used < len(data):
            self._buf = data[used:]

    def _parse(self, data: bytes) -> int:
        """Handle every whole frame in ``data``; return the bytes consumed."""
        conn = self.conn
        assert conn is not None
        n = len(data)
        pos = 0
        if self._skip:  # the rest of an oversized frame: drop it unread
            pos = min(self._skip, n)
            self._skip -= pos
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
                raise _Fail(PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise _Fail(PROTOCOL_ERROR, "client frame not masked")
            if opcode >= 0x8:
                if not b0 & 0x80 or length > 125:
                    raise _Fail(PROTOCOL_ERROR, "bad control frame")
            elif length + (sum(map(len, self._frag)) if self._frag else 0) > self._max:
                self._skip = max(0, end - n)
                self._frag = None
                if self._closing:
                    pos = min(end, n)
                    continue
                raise _Fail(CloseCode.MESSAGE_TOO_BIG, "frame over max_frame_size")
            if end > n:
                break
            payload = unmask(data[head : head + 4], data[head + 4 : end])
            pos = end
            conn.last_seen = self.server.loop.time()
            if self._closing:
                if opcode == OP_CLOSE:
                    self.transport.close()
                    return n
                continue  # after our close frame only the client's close matters
            self._frame(opcode, bool(b0 & 0x80), payload)
        return pos

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if self._frag is not None:
                raise _Fail(PROTOCOL_ERROR, "new message inside a fragmented one")
            if fin:
                self._deliver(payload)
            else:
                self._frag, self._frag_op = [payload], opcode
        elif opcode == OP_CONTINUATION:
            if self._frag is None:
                raise _Fail(PROTOCOL_ERROR, "continuation without a message")
            self._frag.append(payload)
            if fin:
                message, self._frag = b"".join(self._frag), None
                self._deliver(message)
        elif opcode == OP_PING:
            self.transport.write(frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            pass  # liveness is already refreshed
        elif opcode == OP_CLOSE:
            self._client_close(payload)
        else:
            raise _Fail(PROTOCOL_ERROR, f"unknown opcode {opcode}")

    def _client_close(self, payload: bytes) -> None:
        code = 0
        if len(payload) == 1:
            raise _Fail(PROTOCOL_ERROR, "close frame with a 1-byte body")
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if (code < 3000 and code not in _CLIENT_CODES) or code >= 5000:
                raise _Fail(PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                payload[2:].decode()
            except UnicodeDecodeError:
                raise _Fail(INVALID_TEXT, "close reason is not UTF-8") from None
        # Answer 1000 and hang up; the connection closes with the client's code.
        self._closing = True
        transport = self.transport
        transport.write(close_frame(CloseCode.NORMAL))
        assert self.conn is not None
        self.conn.close(code or CloseCode.NORMAL, "closed by client")
        transport.close()

    # -- handing data frames to the core in order ----------------------------

    def _deliver(self, data: bytes) -> None:
        inbox = self._inbox
        if inbox is not None:  # a drain task is running: keep the order
            inbox.append(data)
            if len(inbox) == INBOX_HIGH:
                self.transport.pause_reading()
            return
        self._inbox = deque((data,))
        self.server.spawn(self._drain())

    async def _drain(self) -> None:
        inbox, conn = self._inbox, self.conn
        assert inbox is not None and conn is not None
        on_frame = self.server.on_frame
        try:
            while inbox and not conn.closed:
                paused = len(inbox) >= INBOX_HIGH
                await on_frame(conn, inbox.popleft())
                if paused and len(inbox) < INBOX_HIGH and not self._lost:
                    self.transport.resume_reading()
        except Exception:
            log.exception("receive hook failed for %r", conn)
            conn.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._inbox = None
