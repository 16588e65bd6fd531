"""``GET /conn?token=T`` (alias ``/chat``): validate, then upgrade, then read.

Validation happens before the upgrade, so a refused client gets a plain HTTP
status with a JSON body. The server then answers ``101`` itself and hands the
socket to a ``WsProtocol``: it reads client frames and the core writes prepared
frames straight to the transport, so a connection keeps no aiohttp request,
response, reader or task alive. Upgrade requests normally arrive through
``front.FrontProtocol`` and never reach aiohttp; the route below serves the rest
(odd requests the front hands on) and takes the socket over from aiohttp.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
from collections.abc import Mapping

from aiohttp import web

from im_core import CloseCode, ConnectRequest, Identity
from im_core.connection import Format
from im_core.errors import ImError
from im_core.server import Rejected, Server

from .errors import json_error
from .wsproto import WsProtocol

SERVER = web.AppKey("server", Server)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
log = logging.getLogger("im.http")


class Refused(Exception):
    """A connection attempt answered with an HTTP error instead of ``101``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def response(self) -> web.Response:
        return json_error(self.status, self.message, self.code)


def accept_key(headers: Mapping[str, str]) -> bytes | None:
    """``Sec-WebSocket-Accept`` for a valid upgrade request, else None."""
    if (
        headers.get("Upgrade", "").lower().strip() != "websocket"
        or "upgrade" not in headers.get("Connection", "").lower()
        or headers.get("Sec-WebSocket-Version", "") not in ("13", "8", "7")
    ):
        return None
    key = headers.get("Sec-WebSocket-Key", "").strip().encode()
    try:
        if len(binascii.a2b_base64(key, strict_mode=True)) != 16:
            return None
    except binascii.Error:
        return None
    return binascii.b2a_base64(hashlib.sha1(key + _GUID).digest(), newline=False)


async def admit(server: Server, connect: ConnectRequest) -> tuple[Identity, Format, bytes]:
    """Validate a connection attempt: its identity, frame format and accept key."""
    if server.stopping:
        raise Refused(503, "server is shutting down")
    query = connect.query
    try:
        identity = await server.authenticate(connect)
        fmt = server.format_for(query.get("codec"), query.get("message_type"))
    except Rejected as exc:
        raise Refused(exc.reject.status, exc.reject.reason) from None
    except ImError as exc:
        raise Refused(exc.status, str(exc), exc.code) from None
    accept = accept_key(connect.headers)
    if accept is None:
        raise Refused(400, "this endpoint needs a WebSocket upgrade request")
    return identity, fmt, accept


def switch(server: Server, transport: asyncio.Transport, accept: bytes) -> WsProtocol:
    """Answer ``101`` and make a ``WsProtocol`` the socket's protocol."""
    transport.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    ws = WsProtocol(server, transport, server.options.max_frame_size)
    transport.set_protocol(ws)
    if not transport.is_reading():
        transport.resume_reading()
    return ws


async def register(
    server: Server, ws: WsProtocol, identity: Identity, fmt: Format, remote: str | None
) -> None:
    """Hand the upgraded socket to the core; frames read meanwhile follow."""
    try:
        conn = await server.attach(identity, fmt, ws.transport, ws.close, remote)
    except Exception:
        log.exception("connecting %s failed", identity.user_id)
        ws.close(CloseCode.INTERNAL_ERROR, "internal error")  # no-op if the core closed it
    else:
        ws.start(conn)


class _TakenOver(web.StreamResponse):
    """What the handler returns once the socket has left aiohttp: nothing to write."""

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def _release(request: web.Request) -> bytes:
    """Make aiohttp forget the request's connection; return bytes it read past it."""
    handler = request.protocol
    tail: bytes = getattr(handler, "_message_tail", b"")
    # With no transport aiohttp can neither write to nor close the socket; the
    # connection_lost call drops it from the server's set and stops its timers.
    handler.transport = None
    handler.connection_lost(None)
    return tail


async def websocket(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    connect = ConnectRequest(
        token=request.query.get("token", ""),
        query=request.query,
        headers=request.headers,
        remote=request.remote,
        path=request.path,
    )
    transport = request.transport
    try:
        identity, fmt, accept = await admit(server, connect)
        if transport is None:
            raise Refused(400, "connection closed")
    except Refused as exc:
        return exc.response()
    ws = switch(server, transport, accept)  # type: ignore[arg-type]
    tail = _release(request)
    if tail:
        ws.data_received(tail)
    await register(server, ws, identity, fmt, connect.remote)
    return _TakenOver()
