"""``GET /conn?token=T`` (alias ``/chat``): validate, then upgrade, then read.

Validation happens before the upgrade, so a refused client gets a plain HTTP
status with a JSON body. The server then answers ``101`` itself and hands the
socket to a ``WsProtocol``: it reads client frames and the core writes prepared
frames straight to the transport, so a connection keeps no aiohttp request,
response, reader or task alive. Upgrade requests normally arrive through
``front.FrontProtocol`` and never reach aiohttp; the route below serves upgrades
that come later on a keep-alive connection, with the same rules
(``head.upgrade_answer``), and takes the socket over from aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from im_core import ConnectRequest, Identity
from im_core.connection import Format
from im_core.connections import Rejected
from im_core.errors import ImError
from im_core.events import events
from im_core.server import Server

from .errors import json_error
from .frames import WEBSOCKET
from .head import BadRequest, accept_key, check_request
from .ws_reader import WsProtocol

if TYPE_CHECKING:
    from im_core.transport import Framing

    from .front import Edge

SERVER = web.AppKey("server", Server)
log = logging.getLogger("im.http")


async def admit(
    server: Server,
    connect: ConnectRequest,
    framing: Framing = WEBSOCKET,
    *,
    codec: str | None = None,
    message_type: str | None = None,
) -> tuple[Identity, Format]:
    """Validate a connection attempt: its identity and its format on ``framing``'s
    wire (codec and message type from the query unless given), else raise
    ``BadRequest`` with the answer."""
    try:
        if server.draining or server.stopping:
            raise BadRequest(503, "server is shutting down")
        query = connect.query
        try:
            identity = await server.connections.authenticate(connect)
            fmt = server.connections.format_for(
                codec or query.get("codec"), message_type or query.get("message_type"), framing
            )
        except Rejected as exc:
            raise BadRequest(exc.reject.status, exc.reject.reason) from None
        except ImError as exc:
            raise BadRequest(exc.status, str(exc), code=exc.code) from None
        except Exception:
            # A validate plugin's bug: the client gets 500, the log one line with the traceback.
            log.exception("validating a connection from %s failed", connect.remote)
            raise BadRequest(500, "internal error") from None
    except BadRequest as exc:
        _refused(exc, connect)
        raise
    return identity, fmt


def _refused(exc: BadRequest, connect: ConnectRequest) -> None:
    """One line per refusal cause and interval: never the token."""
    remote = connect.remote or "-"
    events.info(
        f"refused:{exc.status}:{exc.message[:80]}",
        "refused a connection from %s: %d %s", remote, exc.status, exc.message,
        extra={"im": {
            "event": "refused", "status": exc.status, "reason": exc.message,
            "remote": remote, "path": connect.path,
        }},
    )  # fmt: skip


def switch(edge: Edge, transport: asyncio.Transport, accept: bytes, key: object) -> WsProtocol:
    """Answer ``101`` and make a ``WsProtocol`` the socket's protocol. ``key`` is the
    socket's place at the gate, released when it closes."""
    transport.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    ws = WsProtocol(edge, transport, key)
    transport.set_protocol(ws)
    if not transport.is_reading():
        transport.resume_reading()
    return ws


async def register(
    server: Server, ws: WsProtocol, identity: Identity, fmt: Format, remote: str | None
) -> None:
    """Hand the upgraded socket to the core; frames read meanwhile follow."""
    try:
        conn = await server.connections.attach(identity, fmt, ws.transport, ws.close, remote)
    except Exception:
        log.exception("connecting %s failed", identity.user_id)
        ws.abandon()
    else:
        ws.start(conn)


class TakenOver(web.StreamResponse):
    """What the handler returns once the socket has left aiohttp: nothing to write."""

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def release(request: web.Request) -> bytes:
    """Make aiohttp forget the request's connection; return bytes it read past it.

    This touches aiohttp internals (``_message_tail``, the handler's transport):
    pyproject pins aiohttp to the minor versions this is tested with.
    """
    handler = request.protocol
    tail: bytes = getattr(handler, "_message_tail", b"")
    # With no transport aiohttp can neither write to nor close the socket; the
    # connection_lost call drops it from the server's set and stops its timers.
    handler.transport = None
    handler.connection_lost(None)
    return tail


def handed_over(
    request: web.Request, token: str
) -> tuple[asyncio.Transport, Callable[[], tuple[Edge, object]], ConnectRequest] | None:
    """For a route that takes its socket from aiohttp (``/conn``, ``/sse``): the
    socket's transport, the front's ``take_over`` and the attempt to validate; None
    when the socket is gone or did not come through the front."""
    transport = request.transport
    take_over = getattr(transport.get_protocol(), "take_over", None) if transport else None
    if transport is None or take_over is None:
        return None
    connect = ConnectRequest(
        token=token,
        query=request.query,
        headers=request.headers,
        remote=request.remote,
        path=request.path,
    )
    return transport, take_over, connect


async def websocket(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    handed = handed_over(request, request.query.get("token", ""))
    if handed is None:
        return json_error(400, "connection closed")
    transport, take_over, connect = handed
    try:
        version = f"HTTP/{request.version.major}.{request.version.minor}"
        check_request(request.method, version, request.headers)
        identity, fmt = await admit(server, connect)
        accept = accept_key(request.headers)
    except BadRequest as exc:
        response = json_error(exc.status, exc.message, exc.code)
        response.headers.update(exc.headers)
        return response
    if transport.is_closing():
        return json_error(400, "connection closed")
    edge, key = take_over()
    ws = switch(edge, transport, accept, key)
    tail = release(request)
    if tail:
        ws.data_received(tail)
    await register(server, ws, identity, fmt, connect.remote)
    return TakenOver()
