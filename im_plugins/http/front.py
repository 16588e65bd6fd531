"""The listening socket's first protocol: every request head is read here first.

Each accepted socket starts with a ``FrontProtocol``. It counts the socket at the
``Gate``, gives it ``idle_timeout`` to send a first byte and ``header_timeout``
from then on to finish the request head (at most ``max_header_size`` bytes and
``max_headers`` fields), and parses the head strictly (``head.parse_head``) however
TCP split it. A WebSocket upgrade (``/conn``, ``/chat``) is answered here: the
validate hook runs, and the socket switches to a ``WsProtocol`` with no aiohttp
request, response or task behind it. Any other request (the HTTP API, ``/ping``)
goes to aiohttp's own protocol with the bytes read so far, behind a thin
``Handed`` protocol that releases the socket's place at the gate when it closes.

Refusals are an HTTP status with a JSON body, then a lingering close: the write
side is shut and what the client still sends is read and dropped for a moment, so
the answer is not lost to a reset.

With TLS the listener does the handshake (within ``idle_timeout``) before a
socket reaches its ``FrontProtocol``: everything above then runs unchanged over
the encrypted transport, refusals included.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from im_core import ConnectRequest
from im_core.ratelog import RateLimitedLog

from .errors import error_body
from .gate import UNCOUNTED, Gate
from .head import BadRequest, Head, accept_key, check_request, parse_head
from .options import HttpOptions
from .upgrade import admit, register, switch

if TYPE_CHECKING:
    from im_core.server import Server

log = logging.getLogger("im.http")
PATHS = ("/conn", "/chat")
LINGER = 2.0  # seconds a refused socket is read and drained before it is closed
_HEAD_END = b"\r\n\r\n"


class Edge:
    """What every socket of one HTTP listener shares: limits, counters, the log."""

    __slots__ = ("gate", "http", "log", "options", "server")

    def __init__(self, server: Server, http: Callable[[], asyncio.Protocol]) -> None:
        self.server = server
        self.options = server.options.of(HttpOptions)
        self.http = http
        self.gate = Gate(self.options)
        self.log = RateLimitedLog(log)

    def refused(self, status: int, message: str, peer: str | None) -> None:
        cause = f"refused {status} {message}"
        self.log.info(cause, "refused %d: %s (from %s)", status, message, peer)


def http_answer(exc: BadRequest) -> bytes:
    """A complete ``Connection: close`` response with im's JSON error body."""
    status = exc.status
    body = orjson.dumps(error_body(status, exc.message, exc.code))
    extra = "".join(f"{k}: {v}\r\n" for k, v in exc.headers.items())
    reason = HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode() + body


_HEAD, _VALIDATING, _REFUSED, _DONE = range(4)
#: Seconds a closing TLS socket waits for the client's close_notify (asyncio's
#: default is 30); a client that never answers holds its place at the gate that long.
TLS_SHUTDOWN_TIMEOUT = 2.0


class FrontProtocol(asyncio.Protocol):
    __slots__ = ("_buf", "_counted", "_edge", "_ip", "_state", "_timer", "transport")

    def __init__(self, edge: Edge) -> None:
        self._edge = edge
        self._buf = bytearray()
        self._counted = False  # holds a place at the gate until closed or handed on
        self._ip: str | None = None
        self._state = _HEAD
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    # -- accept -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        edge = self._edge
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else None
        loop = edge.server.loop
        self._ip = ip
        refusal = edge.gate.enter(ip, loop.time())
        if refusal is not None:
            self._refuse(BadRequest(*refusal, {"Retry-After": "1"}), ip)
            return
        self._counted = True
        self._timer = loop.call_later(edge.options.idle_timeout, self._timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._counted:
            self._counted = False
            self._edge.gate.leave(self._ip)
        self._state = _DONE

    def _timed_out(self) -> None:
        self._timer = None
        if self._state != _HEAD:
            return
        if not self._buf:  # nothing asked, nothing to answer
            assert self.transport is not None
            self.transport.abort()
        else:
            self._refuse(BadRequest(408, "request head not complete in time"), self._ip)

    # -- the first request head -------------------------------------------------

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _VALIDATING:  # keep what comes until the switch to WsProtocol
            self._buf += data
            if len(self._buf) > self._edge.options.max_frame_size and self.transport:
                self.transport.pause_reading()  # switch() resumes
            return
        if state != _HEAD:
            return  # refused: drain and drop
        buf = self._buf
        opts = self._edge.options
        first = not buf
        start = max(0, len(buf) - 3)
        buf += data
        end = buf.find(_HEAD_END, start)
        if end < 0:
            if len(buf) > opts.max_header_size:
                self._refuse(BadRequest(431, "request head too large"), self._ip)
            elif first and self._timer is not None:  # a partial head: its own clock starts
                self._timer.cancel()
                loop = self._edge.server.loop
                self._timer = loop.call_later(opts.header_timeout, self._timed_out)
            return
        if end + 4 > opts.max_header_size:
            self._refuse(BadRequest(431, "request head too large"), self._ip)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            head = parse_head(bytes(buf[:end]), opts.max_headers)
            if head.path in PATHS:
                check_request(head.method, head.version, head.headers)
        except BadRequest as exc:
            self._refuse(exc, self._ip)
            return
        if head.path not in PATHS:
            self._to_aiohttp(bytes(buf))
            return
        self._buf = buf[end + 4 :]
        self._state = _VALIDATING
        self._edge.server.spawn(self._upgrade(head))

    def _refuse(self, exc: BadRequest, ip: str | None) -> None:
        """Answer with a JSON error, shut the write side, drop what follows a while."""
        self._state = _REFUSED
        self._buf = bytearray()
        if self._timer is not None:
            self._timer.cancel()
        self._edge.refused(exc.status, exc.message, ip)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(http_answer(exc))
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self._edge.server.loop.call_later(LINGER, transport.close)

    def eof_received(self) -> bool:
        if self._state == _REFUSED and self.transport is not None:
            self.transport.close()
        return False

    def _to_aiohttp(self, data: bytes) -> None:
        """Give the socket to aiohttp as if it had accepted it, with the bytes so far."""
        transport = self.transport
        assert transport is not None
        handed = Handed(self._edge.http(), self._edge, self._ip, self._counted)
        self._counted, self._state, self._buf = False, _DONE, bytearray()
        transport.set_protocol(handed)
        handed.connection_made(transport)
        handed.data_received(data)

    # -- the upgrade --------------------------------------------------------------

    async def _upgrade(self, head: Head) -> None:
        edge, transport = self._edge, self.transport
        assert transport is not None
        params = MultiDictProxy(MultiDict(parse_qsl(head.query, keep_blank_values=True)))
        connect = ConnectRequest(
            token=params.get("token", ""),
            query=params,
            headers=head.headers,
            remote=self._ip,
            path=head.path,
        )
        try:
            identity, fmt = await admit(edge.server, connect)
            accept = accept_key(head.headers)
        except BadRequest as exc:
            if self._state == _VALIDATING:
                self._refuse(exc, self._ip)
            return
        if self._state != _VALIDATING:  # the client left meanwhile
            return
        counted, self._counted, self._state = self._counted, False, _DONE
        ws = switch(edge, transport, accept, self._ip if counted else UNCOUNTED)
        early, self._buf = bytes(self._buf), bytearray()
        if early:  # frames the client sent without waiting for the 101
            ws.data_received(early)
        await register(edge.server, ws, identity, fmt, connect.remote)


class Handed(asyncio.Protocol):
    """aiohttp's protocol for a socket the front handed on; releases its gate place.

    If aiohttp's route later upgrades the socket, ``take_over`` moves that duty to
    the ``WsProtocol``.
    """

    __slots__ = ("_counted", "_edge", "_inner", "_ip")

    def __init__(self, inner: asyncio.Protocol, edge: Edge, ip: str | None, counted: bool):
        self._inner, self._edge, self._ip, self._counted = inner, edge, ip, counted

    def take_over(self) -> tuple[Edge, object]:
        """The listener's edge and the gate key the socket's new owner releases
        (``UNCOUNTED``: none)."""
        counted, self._counted = self._counted, False
        return self._edge, self._ip if counted else UNCOUNTED

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._edge.gate.leave(self._ip)
        self._inner.connection_lost(exc)


class FrontSite(web.TCPSite):
    """A TCP site whose sockets start with a ``FrontProtocol`` (after the TLS
    handshake, given an ``ssl_context``)."""

    def __init__(
        self,
        runner: web.AppRunner,
        server: Server,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            runner,
            host,
            port,
            backlog=4096,
            ssl_context=ssl_context,
            reuse_port=server.options.reuse_port or None,  # workers share the port
        )
        self._im = server

    async def start(self) -> None:
        await web.BaseSite.start(self)
        http = self._runner.server
        assert http is not None
        edge = self.edge = Edge(self._im, http)
        loop = asyncio.get_running_loop()
        tls = self._ssl_context
        self._server = await loop.create_server(
            lambda: FrontProtocol(edge),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl=tls,
            # A TLS socket reaches the gate once its handshake is done; until then
            # it is bounded in time like a silent plain one.
            ssl_handshake_timeout=edge.options.idle_timeout if tls else None,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT if tls else None,
        )
