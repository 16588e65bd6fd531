"""The HTTP push API under ``/api/v1/``: one route per method of ``im.v1.Im``
(``proto/im_v1.proto``), JSON fields named as the proto fields. A bytes field
``data`` travels as ``data_b64`` (base64) or ``text`` (UTF-8). Each handler calls
the core once; errors are ``{"error": {"code", "message"}}`` (docs/api.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import orjson
from aiohttp import web

from im_core.errors import (
    Busy,
    ImError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
)
from im_core.server import Server
from im_plugins.ack_events import AckEvent, feed_for

from .errors import json_error
from .openapi import document

log = logging.getLogger("im.http.api")

#: Seconds between keep-alive comments on the ack event stream.
SSE_KEEPALIVE = 15.0

PREFIX = "/api/v1"
API_SERVER = web.AppKey("api_server", Server)
API_KEY = web.AppKey("api_key", bytes)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    return parse(await request.read())


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


async def push_stream(request: web.Request) -> web.Response:
    """NDJSON body, one ``StreamPush`` per line; results only for lines with news."""
    server = request.app[API_SERVER]
    results: list[dict[str, Any]] = []
    seq = -1
    async for line in _lines(request, _line_limit(server)):
        seq += 1
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
            results.append({"seq": seq, "error": {"code": exc.code, "message": str(exc)}})
            continue
        if sid or missing:
            results.append({"seq": seq, "sid": sid, "missing": missing})
    return reply({"processed": seq + 1, "results": results})


def _line_limit(server: Server) -> int:
    return 2 * server.options.max_message_size + (64 << 10)  # base64 + JSON around it


async def _lines(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """Non-blank lines of the body as they arrive (the body may be any length)."""
    buffer = b""
    async for chunk in request.content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
        if len(buffer) > limit:
            raise PayloadTooLarge(f"body: a line is longer than {limit} bytes")
    if buffer.strip():
        yield buffer


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
    subscription = feed_for(request.app[API_SERVER]).subscribe()
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


def _event_json(event: AckEvent) -> dict[str, Any]:
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
    given = request.headers.get("X-API-Key")
    if given is None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        given = auth[7:]
    return hmac.compare_digest(key, given.encode())


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
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return json_error(500, "internal error")


def api_app(server: Server) -> web.Application:
    """The sub-application mounted at ``/api/v1``."""
    opts = server.options
    app = web.Application(
        middlewares=[api_middleware],
        client_max_size=max(4 << 20, 2 * opts.max_message_size + (64 << 10)),
    )
    app[API_SERVER] = server
    app[API_KEY] = (opts.api_key or "").encode()
    for method, path, handler, _ in ROUTES:
        app.router.add_route(method, path, handler)
    return app
