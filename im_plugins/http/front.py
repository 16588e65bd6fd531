"""The listening socket's first protocol: WebSocket upgrades skip aiohttp.

Each accepted socket starts with a ``FrontProtocol``. If its first request is a
plain ``GET /conn`` (or ``/chat``) WebSocket upgrade, the front parses it, runs
validation and switches the socket to a ``WsProtocol``: no aiohttp request
handler, request object or task is created for it. Anything else (the HTTP API,
``/ping``, odd or malformed requests) is handed to aiohttp's own protocol with the
bytes read so far, and aiohttp serves it exactly as if it had accepted the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from im_core import ConnectRequest

from .websocket import Refused, admit, register, switch

if TYPE_CHECKING:
    from im_core.server import Server

PATHS = (b"/conn", b"/chat")
_GETS = (b"GET /conn", b"GET /chat")
MAX_EARLY = 1 << 16  # bytes buffered while validating before reading pauses
# Headers that give a GET a body or change framing: such requests go to aiohttp.
_BODY_HEADERS = frozenset(("content-length", "transfer-encoding"))


def parse_upgrade(head: bytes) -> tuple[str, str, CIMultiDict[str]] | None:
    """(path, query string, headers) of a simple ``GET /conn`` request, else None."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return None
    path, _, query = parts[1].partition(b"?")
    if path not in PATHS:
        return None
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or line[:1] in b" \t":
            return None
        key = name.decode("latin-1")
        if key.lower() in _BODY_HEADERS:
            return None
        headers.add(key, value.strip().decode("latin-1"))
    try:
        return path.decode(), query.decode(), headers
    except UnicodeDecodeError:
        return None


class FrontProtocol(asyncio.Protocol):
    __slots__ = ("_buf", "_http", "_lost", "_server", "_validating", "transport")

    def __init__(self, server: Server, http: Callable[[], asyncio.Protocol]) -> None:
        self._server = server
        self._http = http
        self._buf = b""
        self._lost = False
        self._validating = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._validating:  # keep what comes until the switch to WsProtocol
            self._buf += data
            if len(self._buf) > MAX_EARLY and self.transport is not None:
                self.transport.pause_reading()  # switch() resumes
            return
        # The fast path takes an upgrade request that arrives whole in the first read
        # (the common case); a partial or unusual one goes to aiohttp, its parser,
        # limits and timeouts, and still upgrades through the route.
        end = data.find(b"\r\n\r\n")
        parsed = parse_upgrade(data[:end]) if end > 0 and data.startswith(_GETS) else None
        if parsed is None:
            self._buf = data
            self._to_aiohttp()
            return
        self._buf = data[end + 4 :]
        self._validating = True
        self._server.spawn(self._upgrade(*parsed))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True

    def _to_aiohttp(self) -> None:
        """Give the socket to aiohttp as if it had accepted it, with the bytes so far."""
        transport = self.transport
        assert transport is not None
        handler = self._http()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._buf:
            handler.data_received(self._buf)
        self._buf = b""

    async def _upgrade(self, path: str, query: str, headers: CIMultiDict[str]) -> None:
        server, transport = self._server, self.transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        params = MultiDictProxy(MultiDict(parse_qsl(query, keep_blank_values=True)))
        connect = ConnectRequest(
            token=params.get("token", ""),
            query=params,
            headers=CIMultiDictProxy(headers),
            remote=peer[0] if peer else None,
            path=path,
        )
        try:
            identity, fmt, accept = await admit(server, connect)
        except Refused as exc:
            if not self._lost:
                transport.write(_http_response(exc.response()))
                transport.close()
            return
        if self._lost:
            return
        ws = switch(server, transport, accept)
        early, self._buf = self._buf, b""
        if early:  # frames the client sent without waiting for the 101
            ws.data_received(early)
        await register(server, ws, identity, fmt, connect.remote)


def _http_response(resp: web.Response) -> bytes:
    body = resp.body if isinstance(resp.body, bytes) else b""
    return (
        f"HTTP/1.1 {resp.status} {resp.reason}\r\n"
        f"Content-Type: {resp.content_type}; charset={resp.charset or 'utf-8'}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class FrontSite(web.TCPSite):
    """A TCP site whose sockets start with a ``FrontProtocol``."""

    def __init__(self, runner: web.AppRunner, server: Server, host: str, port: int) -> None:
        super().__init__(runner, host, port, backlog=4096)
        self._im = server

    async def start(self) -> None:
        await web.BaseSite.start(self)
        http = self._runner.server
        assert http is not None
        server = self._im
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FrontProtocol(server, http),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
