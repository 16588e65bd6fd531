"""The HTTP push API under ``/api/v1/``: one route per method of ``im.v1.Im``
(``proto/im_v1.proto``), JSON fields named as the proto fields. A bytes field
``data`` travels as ``data_b64`` (base64) or ``text`` (UTF-8). Each handler calls
the core once; errors are ``{"error": {"code", "message"}}`` (docs/api.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from im_core.ack import AckOutcome
from im_core.errors import (
    Busy,
    ImError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
)
from im_core.server import Server
from im_plugins.api_key import key_matches
from im_plugins.limits import request_limit

from .errors import json_error
from .openapi import document

log = logging.getLogger("im.http.api")

#: Seconds between keep-alive comments on the ack event stream.
SSE_KEEPALIVE = 15.0
#: push_stream results per write at most: a chunk read can hold ~100k short lines.
WRITE_BATCH = 1024

PREFIX = "/api/v1"
API_SERVER = web.AppKey("api_server", Server)
API_KEY = web.AppKey("api_key", bytes)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestTimeout(ImError):
    """The request body did not arrive within ``body_timeout``."""

    status = 408
    code = "request_timeout"


def body_limit(server: Server) -> int:
    """Bytes of one unary request body (and of one push_stream line)."""
    return request_limit(server.options.max_message_size, base64=True)


def reply(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def error_response(exc: ImError) -> web.Response:
    if isinstance(exc, Busy):
        response = json_error(exc.status, str(exc), exc.code, queue_length=exc.queue_length)
        response.headers["Retry-After"] = "1"
        return response
    return json_error(exc.status, str(exc), exc.code)


# --- request bodies -----------------------------------------------------------------


class Body:
    """A JSON object whose accessors raise ``InvalidArgument`` naming the field."""

    __slots__ = ("data", "where")

    def __init__(self, data: Any, where: str = "", what: str = "") -> None:
        """``where`` prefixes field names (``contents.v1``); ``what`` names the object."""
        if not isinstance(data, dict):
            raise InvalidArgument(f"{what or where or 'body'}: must be a JSON object")
        self.data = data
        self.where = where

    def _name(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def string(self, name: str) -> str:
        value = self.data.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"{self._name(name)}: required (non-empty string)")
        return value

    def optional_string(self, name: str) -> str:
        value = self.data.get(name, "")
        if not isinstance(value, str):
            raise InvalidArgument(f"{self._name(name)}: must be a string")
        return value

    def strings(self, name: str, required: bool = True) -> list[str]:
        value = self.data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{self._name(name)}: must be a list of strings")
        if required and not value:
            raise InvalidArgument(f"{self._name(name)}: required (at least one)")
        return value

    def flag(self, name: str) -> bool:
        value = self.data.get(name, False)
        if not isinstance(value, bool):
            raise InvalidArgument(f"{self._name(name)}: must be true or false")
        return value

    def match(self) -> str:
        value = self.data.get("match", "any")
        if value not in ("any", "all"):
            raise InvalidArgument(f"{self._name('match')}: must be 'any' or 'all'")
        return value

    def payload(self) -> bytes:
        """The bytes of ``data_b64`` or ``text`` (exactly one of them)."""
        b64, text = self.data.get("data_b64"), self.data.get("text")
        if (b64 is None) == (text is None):
            raise InvalidArgument(
                f"{self._name('data_b64')} or {self._name('text')}: exactly one is required"
            )
        if text is not None:
            if not isinstance(text, str) or not text:
                raise InvalidArgument(f"{self._name('text')}: must be a non-empty string")
            return text.encode()
        if not isinstance(b64, str) or not b64:
            raise InvalidArgument(f"{self._name('data_b64')}: must be a non-empty base64 string")
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{self._name('data_b64')}: not valid base64") from None


def parse(raw: bytes, what: str = "body") -> Body:
    """A JSON object from ``raw``; ``what`` names it in errors (the body, a line)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"{what}: malformed JSON ({exc})") from None
    return Body(data, what=what)


async def read_body(request: web.Request) -> Body:
    return parse(await read_whole(request))


async def read_whole(request: web.Request) -> bytes:
    """The body, refused (413) as soon as it passes the limit aiohttp was given
    (``client_max_size`` of the root app, see ``HttpTransport.build_app``) and (408)
    unless it all arrives within ``body_timeout``."""
    limit = request.client_max_size
    if (request.content_length or 0) > limit:
        raise _too_large("body", limit)  # refused before reading
    try:
        if request.content.is_eof():  # the body came with the head (small requests): no timer
            body = await request.content.read()
        else:
            body = await _read_in_time(request, limit)
    except RequestPayloadError as exc:
        raise InvalidArgument(f"body: malformed ({exc})") from None
    if len(body) > limit:
        raise _too_large("body", limit)
    return body


async def _read_in_time(request: web.Request, limit: int) -> bytes:
    timeout = request.app[API_SERVER].options.body_timeout
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > limit:
                    raise _too_large("body", limit)
    except TimeoutError:
        raise RequestTimeout(f"body: not received within body_timeout ({timeout:g} s)") from None
    return bytes(body)


def _too_large(what: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"{what}: over {limit} bytes (the limit follows max_message_size)")


# --- handlers: one per im.v1.Im method ---------------------------------------------------


async def ping(request: web.Request) -> web.Response:
    return reply({"node_id": request.app[API_SERVER].node_id})


async def push_user(request: web.Request) -> web.Response:
    body = await read_body(request)
    user, data = body.string("user"), body.payload()
    sid = await request.app[API_SERVER].push_one(user, data, ack=body.flag("ack"))
    return reply({"sid": sid, "missing": []})


async def push_users(request: web.Request) -> web.Response:
    body = await read_body(request)
    users, data = body.strings("users"), body.payload()
    result = await request.app[API_SERVER].push(users, data, ack=body.flag("ack"))
    return reply({"sid": result.sid, "missing": list(result.missing)})


async def push_tags(request: web.Request) -> web.Response:
    body = await read_body(request)
    tags, match, data = body.strings("tags"), body.match(), body.payload()
    queued = request.app[API_SERVER].push_tags(tags, data, match=match, ack=body.flag("ack"))
    return reply({"sid": queued.sid, "queue_length": queued.queue_length})


async def push_by_tag(request: web.Request) -> web.Response:
    body = await read_body(request)
    contents = body.data.get("contents")
    if not isinstance(contents, dict) or not contents:
        raise InvalidArgument("contents: required (an object tag -> {data_b64 | text})")
    payloads = {tag: Body(value, f"contents.{tag}").payload() for tag, value in contents.items()}
    queue_length = request.app[API_SERVER].push_by_tag(payloads)
    return reply({"sid": 0, "queue_length": queue_length})


async def broadcast(request: web.Request) -> web.Response:
    body = await read_body(request)
    queued = request.app[API_SERVER].broadcast(body.payload(), ack=body.flag("ack"))
    return reply({"sid": queued.sid, "queue_length": queued.queue_length})


async def push_stream(request: web.Request) -> web.StreamResponse:
    """NDJSON body, one ``StreamPush`` per line; results only for lines with news.

    The reply is written while the body is read, one write per chunk read (or per
    ``WRITE_BATCH`` results), so neither side holds all results, and a caller that
    does not read the reply stops the reading (aiohttp's write backpressure).
    Limits: ``max_stream_body`` bytes in all, one line as big as a unary body,
    ``body_timeout`` between chunks.
    """
    server = request.app[API_SERVER]
    out = StreamReply(request)
    try:
        limit = server.options.max_stream_body
        if (request.content_length or 0) > limit:
            raise PayloadTooLarge(f"body: over max_stream_body ({limit} bytes)")
        async with contextlib.aclosing(_line_batches(request, server)) as batches:
            async for lines in batches:
                results: list[dict[str, Any]] = []
                for line in lines:
                    result = await _push_line(server, line, out.processed)
                    out.processed += 1
                    if result is not None:
                        results.append(result)
                        if len(results) == WRITE_BATCH:
                            await out.write(results)
                            results = []
                await out.write(results)
    except ImError as exc:
        return await out.end(exc)
    except ConnectionError:
        raise  # the caller went away
    except Exception:
        if not out.started:
            raise  # the middleware answers 500
        log.exception("unexpected error in push_stream")
        return await out.end(ImError("internal error"))
    return await out.end()


async def _push_line(server: Server, line: bytes, seq: int) -> dict[str, Any] | None:
    """Push one line; its result, or None when there is no news."""
    try:
        body = parse(line, f"line {seq + 1}")  # field errors read as in gRPC
        data, ack = body.payload(), body.flag("ack")
        if body.data.get("users"):
            result = await server.push(body.strings("users"), data, ack=ack)
            sid, missing = result.sid, list(result.missing)
        elif body.data.get("tags"):
            sid = server.push_tags(body.strings("tags"), data, match=body.match(), ack=ack).sid
            missing = []
        elif body.flag("all"):
            sid, missing = server.broadcast(data, ack=ack).sid, []
        else:
            raise InvalidArgument("target: one of users, tags or all is required")
    except ImError as exc:
        return {"seq": seq, "error": {"code": exc.code, "message": str(exc)}}
    if sid or missing:
        return {"seq": seq, "sid": sid, "missing": missing}
    return None


class StreamReply:
    """The push_stream reply ``{"results": [...], "processed": N}``, written piece
    by piece (one JSON object however it is cut).

    Nothing is sent before the first result, so an error until then (body over a
    limit, too slow, malformed) is a plain error response (413, 408, 400) that also
    carries ``processed`` and ``results``. After it the status is sent: the error
    becomes a last entry in ``results`` (``seq``: the first push not done) and an
    ``error`` beside ``processed``. Either way the rest of the body is not pushed:
    aiohttp reads and drops it for up to its lingering time (10 s), then closes.
    """

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.processed = 0
        self._response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self._response is not None

    async def write(self, results: list[dict[str, Any]]) -> None:
        if not results:
            return
        # One encoding per batch: each orjson.dumps result holds a 4 KiB buffer.
        encoded = orjson.dumps(results)[1:-1]
        if self._response is None:
            self._response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await self._response.prepare(self.request)
            head = b'{"results":['
        else:
            head = b","
        await self._response.write(head + encoded)

    async def end(self, exc: ImError | None = None) -> web.StreamResponse:
        error = None if exc is None else {"code": exc.code, "message": str(exc)}
        tail: dict[str, Any] = {"processed": self.processed}
        if error is not None:
            tail["error"] = error
        if self._response is None:
            if exc is None:
                return reply({"results": [], **tail})
            body = {"results": [], **tail, "status": exc.status, "data": str(exc)}
            return web.Response(
                body=orjson.dumps(body), status=exc.status, content_type="application/json"
            )
        last = b""
        if error is not None:
            last = b"," + orjson.dumps({"seq": self.processed, "error": error})
        await self._response.write(last + b"]," + orjson.dumps(tail)[1:])
        await self._response.write_eof()
        return self._response


async def _line_batches(request: web.Request, server: Server) -> AsyncIterator[list[bytes]]:
    """Non-blank lines of the body, one list per chunk read. Past a limit it raises,
    after yielding the whole lines before the point where the limit was crossed."""
    line_limit = body_limit(server)
    room = server.options.max_stream_body
    pending: list[bytes] = []  # pieces of the line not finished yet
    pending_size = 0
    async for chunk in _chunks(request, server.options.body_timeout):
        over = len(chunk) > room
        if over:
            chunk = chunk[:room]
        room -= len(chunk)
        *lines, rest = chunk.split(b"\n")
        if lines and pending:
            lines[0] = b"".join((*pending, lines[0]))
            pending, pending_size = [], 0
        if rest:
            pending.append(rest)
            pending_size += len(rest)
        batch = [line for line in lines if line.strip()]
        long = next((i for i, line in enumerate(batch) if len(line) > line_limit), None)
        if long is not None:
            yield batch[:long]
            raise _too_large("line", line_limit)
        yield batch
        if over:
            limit = server.options.max_stream_body
            raise PayloadTooLarge(f"body: over max_stream_body ({limit} bytes)")
        if pending_size > line_limit:
            raise _too_large("line", line_limit)
    last = b"".join(pending)
    if last.strip():
        yield [last]


async def _chunks(request: web.Request, timeout: float) -> AsyncIterator[bytes]:
    """The body as it arrives; ``RequestTimeout`` when no byte comes for ``timeout``."""
    content = request.content
    try:
        while True:
            async with asyncio.timeout(timeout):
                chunk = await content.readany()
            if not chunk:
                return
            yield chunk
    except TimeoutError:
        raise RequestTimeout(f"body: nothing received for body_timeout ({timeout:g} s)") from None
    except RequestPayloadError as exc:
        raise InvalidArgument(f"body: malformed ({exc})") from None


async def kick(request: web.Request) -> web.Response:
    body = await read_body(request)
    user, reason = body.string("user"), body.optional_string("reason") or "kicked"
    if not await request.app[API_SERVER].kick(user, reason):
        raise NotFound(f"user {user!r} is not online")
    return reply({})


async def presence(request: web.Request) -> web.Response:
    user = request.query.get("user")
    if not user:
        raise InvalidArgument("user: required (query parameter)")
    found = await request.app[API_SERVER].presence(user)
    if found is None:
        return reply({"online": False, "node_id": 0, "conn_id": "", "tags": [], "connected_at": 0})
    return reply({"online": True, **attrs.asdict(found, filter=lambda a, v: a.name != "user_id")})


async def retag(request: web.Request) -> web.Response:
    body = await read_body(request)
    user = body.string("user")
    add, remove = body.strings("add", required=False), body.strings("remove", required=False)
    if not add and not remove:
        raise InvalidArgument("add, remove: at least one tag to add or remove is required")
    if not await request.app[API_SERVER].retag(user, add, remove):
        raise NotFound(f"user {user!r} is not online")
    return reply({})


async def distribution(request: web.Request) -> web.Response:
    stats = await request.app[API_SERVER].distribution()
    return reply({"tags": [attrs.asdict(s) for s in stats.values()]})


async def stats(request: web.Request) -> web.Response:
    return reply(attrs.asdict(await request.app[API_SERVER].stats()))


async def ack_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``event: acked|expired``, ``data:`` an AckEvent as JSON.

    A comment line every ``SSE_KEEPALIVE`` seconds keeps proxies from timing the
    stream out and finds a subscriber that went away (the write fails).
    """
    subscription = request.app[API_SERVER].outcomes.subscribe()
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        await response.prepare(request)
        await response.write(b": subscribed\n\n")  # the caller knows it is subscribed
        while True:
            try:
                event = await asyncio.wait_for(subscription.get(), SSE_KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            except ImError as exc:
                error = {"error": {"code": exc.code, "message": str(exc)}}
                await response.write(_sse("error", error))
                break
            if event is None:
                break
            await response.write(_sse(event.outcome, _event_json(event)))
    except ConnectionError:
        pass  # the subscriber went away
    finally:
        subscription.close()
    return response


def _event_json(event: AckOutcome) -> dict[str, Any]:
    return {
        "outcome": event.outcome,
        "user": event.user_id,
        "sid": event.sid,
        "tries": event.tries,
        "reason": event.reason,
        "data_b64": base64.b64encode(event.payload).decode(),
    }


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def openapi(request: web.Request) -> web.Response:
    return reply(document(ROUTES, PREFIX))


#: (HTTP method, path under PREFIX, handler, im.v1.Im method it mirrors).
ROUTES: tuple[tuple[str, str, Handler, str], ...] = (
    ("GET", "/ping", ping, "Ping"),
    ("POST", "/push_user", push_user, "PushUser"),
    ("POST", "/push_users", push_users, "PushUsers"),
    ("POST", "/push_tags", push_tags, "PushTags"),
    ("POST", "/push_by_tag", push_by_tag, "PushByTag"),
    ("POST", "/broadcast", broadcast, "Broadcast"),
    ("POST", "/push_stream", push_stream, "PushStream"),
    ("POST", "/kick", kick, "Kick"),
    ("GET", "/presence", presence, "Presence"),
    ("POST", "/retag", retag, "Retag"),
    ("GET", "/distribution", distribution, "Distribution"),
    ("GET", "/stats", stats, "Stats"),
    ("GET", "/ack_events", ack_events, "AckEvents"),
    ("GET", "/openapi.json", openapi, ""),
)
OPEN_PATHS = frozenset({f"{PREFIX}/openapi.json"})


# --- auth and errors -------------------------------------------------------------------


def _authorized(request: web.Request, key: bytes) -> bool:
    headers = request.headers
    return key_matches(key, headers.get("X-API-Key"), headers.get("Authorization"))


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.app[API_KEY]
    try:
        if key and request.path not in OPEN_PATHS and not _authorized(request, key):
            raise Unauthenticated(
                "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)"
            )
        return await handler(request)
    except ImError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason)
    except ConnectionError:
        raise  # the caller went away: aiohttp drops the request quietly
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return json_error(500, "internal error")


def api_app(server: Server) -> web.Application:
    """The sub-application mounted at ``/api/v1``. Its body limit is the root
    app's (aiohttp applies that one): ``HttpTransport.build_app`` sets it."""
    opts = server.options
    app = web.Application(middlewares=[api_middleware])
    app[API_SERVER] = server
    app[API_KEY] = (opts.api_key or "").encode()
    for method, path, handler, _ in ROUTES:
        app.router.add_route(method, path, handler)
    return app
