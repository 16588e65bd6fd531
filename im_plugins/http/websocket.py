"""``GET /conn?token=T`` (alias ``/chat``): validate, then upgrade, then read.

Validation happens before the upgrade, so a refused client gets a plain HTTP
status with a JSON body. The handler then answers ``101`` itself and takes the
socket away from aiohttp (``take_over``): a ``WsProtocol`` reads client frames
and the core writes prepared frames straight to the transport, so a connection
keeps no aiohttp request, response, reader or task alive.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging

from aiohttp import web

from im_core import CloseCode, ConnectRequest
from im_core.errors import ImError
from im_core.server import Rejected, Server

from .errors import json_error
from .wsproto import WsProtocol

SERVER = web.AppKey("server", Server)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
log = logging.getLogger("im.http")


def accept_key(request: web.Request) -> bytes | None:
    """``Sec-WebSocket-Accept`` for a valid upgrade request, else None."""
    headers = request.headers
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


class _TakenOver(web.StreamResponse):
    """What the handler returns once the socket has left aiohttp: nothing to write."""

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def take_over(request: web.Request, protocol: asyncio.Protocol) -> asyncio.Transport:
    """Move the request's socket to ``protocol``; aiohttp forgets the connection."""
    handler = request.protocol
    transport = request.transport
    assert transport is not None
    tail = getattr(handler, "_message_tail", b"")  # bytes sent right behind the request
    transport.set_protocol(protocol)
    # With no transport aiohttp can neither write to nor close the socket; the
    # connection_lost call drops it from the server's set and stops its timers.
    handler.transport = None
    handler.connection_lost(None)
    if not transport.is_reading():
        transport.resume_reading()
    if tail:
        protocol.data_received(tail)
    return transport  # type: ignore[return-value]


async def websocket(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    if server.stopping:
        return json_error(503, "server is shutting down")
    query = request.query
    connect = ConnectRequest(
        token=query.get("token", ""),
        query=query,
        headers=request.headers,
        remote=request.remote,
        path=request.path,
    )
    try:
        identity = await server.authenticate(connect)
        fmt = server.format_for(query.get("codec"), query.get("message_type"))
    except Rejected as exc:
        return json_error(exc.reject.status, exc.reject.reason)
    except ImError as exc:
        return json_error(exc.status, str(exc), exc.code)
    accept = accept_key(request)
    if accept is None or request.transport is None:
        return json_error(400, "this endpoint needs a WebSocket upgrade request")
    transport = request.transport
    transport.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    ws = WsProtocol(server, transport, server.options.max_frame_size)  # type: ignore[arg-type]
    take_over(request, ws)
    try:
        conn = await server.attach(identity, fmt, transport, ws.close, connect.remote)
    except Exception:
        log.exception("connecting %s failed", identity.user_id)
        ws.close(CloseCode.INTERNAL_ERROR, "internal error")  # no-op if the core closed it
    else:
        ws.start(conn)
    return _TakenOver()
