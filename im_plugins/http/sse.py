"""Server-Sent Events (EventSource): ``GET /sse?token=T`` and ``POST /sse/send``.

The second implementation of the core's framing contract (``im_core.transport``),
next to the WebSocket's. Validation runs before any answer, so a refused client
gets a plain HTTP status with im's JSON body, as on ``/conn``. An admitted socket
then leaves aiohttp like an upgraded WebSocket (``upgrade.release``): im writes
the response head itself (``Connection: close``: the body ends when the socket
does, so no chunked framing sits between the core's bytes and the wire) and an
``SseProtocol`` watches the socket. The core writes prepared events straight to
the transport; a stream keeps no aiohttp request, response or task alive.

EventSource cannot send on its stream, so a client sends (acks, business data,
heartbeats) with ``POST /sse/send?session=S``, ``S`` being the random id of the
first event. Only a POST refreshes liveness: im's heartbeat rule stays as it is
(a connection silent for 2 x ``heartbeat_interval`` is closed with 4000), and the
``: ping`` comments the sweep writes are only a hint to POST.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from im_core import CloseCode
from im_core.connection import Connection

from .errors import json_error
from .gate import UNCOUNTED
from .head import BadRequest
from .upgrade import SERVER, TakenOver, admit, handed_over, release

if TYPE_CHECKING:
    from .front import Edge

log = logging.getLogger("im.http")

#: Bytes a client may send on its event stream before it is closed (4500).
MAX_STREAM_JUNK = 64 << 10

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"X-Accel-Buffering: no\r\nConnection: close\r\n\r\n"
)


def event(data: bytes, name: bytes = b"", sid: bytes = b"") -> bytes:
    """One SSE event; a line break in ``data`` continues it on another ``data:`` line."""
    head = (b"event: " + name + b"\n" if name else b"") + (b"id: " + sid + b"\n" if sid else b"")
    return head + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


class SseFraming:
    """How pushes travel on an event stream: one ``message`` event each, ``id:`` the
    sid when an ack is wanted. Text codecs only (their bytes are the event data)."""

    name = "sse"
    probe = b": ping\n\n"

    def message(self, data: bytes, binary: bool, sid: int) -> bytes:
        return event(data, sid=str(sid).encode() if sid else b"")


SSE = SseFraming()


class Sessions:
    """Open streams by session id; an id maps to its stream only while it is open."""

    def __init__(self) -> None:
        self.open: dict[str, SseProtocol] = {}

    def new(self, proto: SseProtocol) -> str:
        session = secrets.token_urlsafe(18)
        self.open[session] = proto
        return session


SESSIONS = web.AppKey("sse_sessions", Sessions)


class SseProtocol(asyncio.Protocol):
    """One event stream after its head: forgets its session and ends the connection
    when either side closes. A client sends nothing on it; what comes is dropped."""

    def __init__(self, edge: Edge, transport: asyncio.Transport, gate_key: object) -> None:
        self.edge = edge
        self.transport = transport
        self._gate_key = gate_key  # released at the gate when the socket closes
        self._sessions: Sessions | None = None
        self.session = ""
        self._lost = False
        self._ended = False
        self._junk = 0  # bytes the client sent on the stream
        # Resolved once the core registered the connection (None: it could not).
        self.attached: asyncio.Future[Connection | None] = edge.server.loop.create_future()
        # One POSTed message at a time reaches the core, as a socket's would.
        self.lock = asyncio.Lock()

    def open(self, sessions: Sessions) -> str:
        self._sessions = sessions
        self.session = sessions.new(self)
        return self.session

    def start(self, conn: Connection) -> None:
        if self._lost or self.attached.done():  # the client left while registering
            conn.close(CloseCode.NORMAL, "closed by client")
        else:
            self.attached.set_result(conn)

    def _forget(self) -> None:
        if self._sessions is not None:
            self._sessions.open.pop(self.session, None)
            self._sessions = None
        if not self.attached.done():
            self.attached.set_result(None)

    def close(self, code: int, reason: str) -> asyncio.Future[None] | None:
        """The connection's closer: a last ``close`` event, then the end of the body.
        A slow consumer is reset: its event would sit behind what it does not read.
        Returns what waits for a POSTed message still on its way to the core."""
        self._forget()
        if not (self._ended or self._lost):
            self._ended = True
            if code == CloseCode.SLOW_CONSUMER:
                self.transport.abort()
            else:
                body = orjson.dumps({"code": code, "reason": reason})
                self.transport.write(event(body, b"close"))
                self.transport.close()
        if self.lock.locked():
            return asyncio.ensure_future(self._drained())
        return None

    async def _drained(self) -> None:
        async with self.lock:
            pass

    def abandon(self) -> None:
        """The core could not register the connection: close it as a server error."""
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def data_received(self, data: bytes) -> None:
        # A client sends nothing on its stream (it POSTs): what comes is dropped, and
        # one that keeps sending is closed rather than read for free forever.
        self._junk += len(data)
        if self._junk > MAX_STREAM_JUNK and not self._ended:
            conn = self.attached.result() if self.attached.done() else None
            if conn is not None and not conn.closed:
                conn.close(CloseCode.BAD_FRAME, "data on an event stream (POST it)")
            else:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        key, self._gate_key = self._gate_key, UNCOUNTED
        if key is not UNCOUNTED:
            self.edge.gate.leave(key)  # type: ignore[arg-type]
        conn = self.attached.result() if self.attached.done() else None
        self._forget()
        if conn is not None and not conn.closed:
            conn.close(CloseCode.NORMAL, "closed by client")


def _token(request: web.Request) -> str:
    """The ``token`` query parameter, else an ``Authorization: Bearer`` header's."""
    token = request.query.get("token", "")
    if not token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = value.strip()
    return token


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /sse``: validate, answer the head and a ``session`` event, hand over."""
    server = request.app[SERVER]
    handed = handed_over(request, _token(request))
    if handed is None:
        return json_error(400, "connection closed")
    transport, take_over, connect = handed
    try:
        if request.query.get("message_type", "text") != "text":
            raise BadRequest(400, "message_type: an event stream carries text")
        codec = request.query.get("codec") or "json"
        identity, fmt = await admit(server, connect, SSE, codec=codec, message_type="text")
    except BadRequest as exc:
        return json_error(exc.status, exc.message, exc.code)
    if transport.is_closing():
        return json_error(400, "connection closed")
    edge, key = take_over()
    proto = SseProtocol(edge, transport, key)
    transport.set_protocol(proto)
    release(request)  # a GET has no body: bytes after it are not ours to read
    if not transport.is_reading():
        transport.resume_reading()
    session = proto.open(request.app[SESSIONS])
    # Written before the core knows the connection: the first event, before any push.
    first = orjson.dumps({"session": session, "user": identity.user_id})
    transport.write(_HEAD + event(first, b"session"))
    try:
        conn = await server.connections.attach(
            identity, fmt, transport, proto.close, connect.remote
        )
    except Exception:
        log.exception("connecting %s failed", identity.user_id)
        proto.abandon()
    else:
        proto.start(conn)
    return TakenOver()


async def _body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None if it is longer than ``limit``."""
    if (request.content_length or 0) > limit:
        return None
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def send(request: web.Request) -> web.StreamResponse:
    """``POST /sse/send?session=S``: one client message in the codec's form; an
    empty body is a heartbeat. Answers 204 once the core handled it."""
    server = request.app[SERVER]
    proto = request.app[SESSIONS].open.get(request.query.get("session", ""))
    if proto is None:
        return json_error(404, "session: no open event stream has this id")
    edge = proto.edge
    try:
        async with asyncio.timeout(edge.options.body_timeout):
            body = await _body(request, edge.options.max_frame_size)
    except TimeoutError:
        return json_error(408, "request body not complete in time")
    if body is None:
        return json_error(413, f"body longer than {edge.options.max_frame_size} bytes")
    conn = await proto.attached
    if conn is None or conn.closed:
        return json_error(404, "session: no open event stream has this id")
    conn.last_seen = server.loop.time()
    if body:
        async with proto.lock:
            await server.connections.on_frame(conn, body, binary=False)
    return web.Response(status=204)
