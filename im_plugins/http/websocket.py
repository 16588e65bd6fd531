"""``GET /conn?token=T`` (alias ``/chat``): validate, then upgrade, then read.

Validation happens before the upgrade, so a refused client gets a plain HTTP
status with a JSON body. After the upgrade the core owns the socket's write side
(prepared frames go straight to the transport); this handler only reads.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from im_core import CloseCode, ConnectRequest
from im_core.errors import ImError
from im_core.server import Rejected, Server

from .errors import json_error

SERVER = web.AppKey("server", Server)
log = logging.getLogger("im.http")


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
    ws = web.WebSocketResponse(
        autoping=False,
        compress=False,
        decode_text=False,
        max_msg_size=server.options.max_frame_size,
        timeout=2.0,
    )
    if not ws.can_prepare(request).ok:
        return json_error(400, "this endpoint needs a WebSocket upgrade request")
    await ws.prepare(request)
    transport = request.transport
    assert transport is not None
    closing: list[asyncio.Task[bool]] = []

    def closer(code: int, reason: str) -> None:
        if not ws.closed and not closing:
            closing.append(asyncio.ensure_future(ws.close(code=code, message=reason.encode())))

    try:
        conn = await server.attach(identity, fmt, transport, closer, request.remote)
    except Exception:
        log.exception("connecting %s failed", identity.user_id)
        if closing:
            await closing[0]
        return ws
    clock = server.loop.time
    on_frame = server.on_frame
    try:
        async for msg in ws:
            conn.last_seen = clock()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                await on_frame(conn, msg.data)
            elif kind is WSMsgType.PING:
                await ws.pong(msg.data)
            elif kind is WSMsgType.ERROR:
                break
    finally:
        code = ws.close_code or CloseCode.NORMAL
        if code == CloseCode.MESSAGE_TOO_BIG:
            conn.close(code, "frame over max_frame_size")
        else:
            conn.close(code, "closed by client" if not conn.closed else "")
        if closing:
            await closing[0]
    return ws
