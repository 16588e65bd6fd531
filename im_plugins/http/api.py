"""The HTTP push API under ``/api/v1/``, derived from ``im.v1.Im``
(``proto/im_v1.proto``): one route per method, named as the method in snake case;
a JSON body (or query) is decoded into the method's request message
(``transcode.py``: proto field names, ``data`` as ``data_b64`` or ``text``), served
by the same implementation as gRPC (``im_plugins.push_api.methods``), and the reply
message encoded back. Errors are ``{"error": {"code", "message"}}`` (docs/api.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from im_core.errors import Busy, ImError, InvalidArgument, PayloadTooLarge, Unauthenticated
from im_core.server import PushResult, Server
from im_plugins.api_key import key_matches
from im_plugins.limits import request_limit
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.push_api.methods import PUSH_KINDS, Count, ImMethods, ack_event

from .errors import json_error
from .openapi import document
from .options import HttpOptions
from .transcode import decode, encode

log = logging.getLogger("im.http.api")

#: Seconds between keep-alive comments on the ack event stream.
SSE_KEEPALIVE = 15.0
#: push_stream results per write at most: a chunk read can hold ~100k short lines.
WRITE_BATCH = 1024

PREFIX = "/api/v1"
API_SERVER = web.AppKey("api_server", Server)
API_METHODS = web.AppKey("api_methods", ImMethods)
API_KEY = web.AppKey("api_key", bytes)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Push = Callable[[pb.StreamPush, Count], Awaitable[PushResult]]
SERVICE = pb.DESCRIPTOR.services_by_name["Im"]


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


def parse(raw: bytes, cls: type[Message], what: str = "body") -> Any:
    """The message ``cls`` from the JSON in ``raw``; ``what`` names it in errors."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"{what}: malformed JSON ({exc})") from None
    return decode(data, cls, what=what)


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
    timeout = request.app[API_SERVER].options.of(HttpOptions).body_timeout
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


def unary(method: MethodDescriptor, verb: str) -> Handler:
    """The handler of a unary method: the request message from the JSON body (POST)
    or the query (GET), the shared implementation, the reply message as JSON."""
    cls = GetMessageClass(method.input_type)
    name = method.name
    kind = PUSH_KINDS.get(name)
    if kind is not None:  # a push: counted with its outcome (server.metrics)

        async def push(request: web.Request) -> web.Response:
            with request.app[API_SERVER].metrics.push_call("http", name, kind):
                message = parse(await read_whole(request), cls)
                result = await getattr(request.app[API_METHODS], name)(message)
            return reply(encode(result))

        return push
    if verb == "POST":

        async def post(request: web.Request) -> web.Response:
            message = parse(await read_whole(request), cls)
            return reply(encode(await getattr(request.app[API_METHODS], name)(message)))

        return post
    has_fields = bool(method.input_type.fields)

    async def get(request: web.Request) -> web.Response:
        message = decode(dict(request.query), cls, what="query") if has_fields else cls()
        return reply(encode(await getattr(request.app[API_METHODS], name)(message)))

    return get


async def push_stream(request: web.Request) -> web.StreamResponse:
    """NDJSON body, one ``StreamPush`` per line; results only for lines with news.

    The reply is written while the body is read, one write per chunk read (or per
    ``WRITE_BATCH`` results), so neither side holds all results, and a caller that
    does not read the reply stops the reading (aiohttp's write backpressure).
    Limits: ``max_stream_body`` bytes in all, one line as big as a unary body,
    ``body_timeout`` between chunks.
    """
    server = request.app[API_SERVER]
    push = request.app[API_METHODS].push
    out = StreamReply(request)
    try:
        limit = server.options.of(HttpOptions).max_stream_body
        if (request.content_length or 0) > limit:
            raise PayloadTooLarge(f"body: over max_stream_body ({limit} bytes)")
        batches = contextlib.aclosing(_line_batches(request, server))
        with server.metrics.stream("http") as count:
            async with batches as lines_read:
                async for lines in lines_read:
                    results: list[dict[str, Any]] = []
                    for line in lines:
                        result = await _push_line(push, count, line, out.processed)
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


async def _push_line(push: Push, count: Count, line: bytes, seq: int) -> dict[str, Any] | None:
    """Push one line (counted); its result, or None when there is no news."""
    try:
        try:
            message = parse(line, pb.StreamPush, f"line {seq + 1}")
        except ImError as exc:
            count("none", exc.code)  # not a push: no kind
            raise
        r = await push(message, count)
    except ImError as exc:
        return {"seq": seq, "error": {"code": exc.code, "message": str(exc)}}
    if r.sid or r.missing:
        return {"seq": seq, "sid": r.sid, "missing": list(r.missing), "stored": list(r.stored)}
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


async def _line_batches(request: web.Request, server: Server) -> AsyncGenerator[list[bytes], None]:
    """Non-blank lines of the body, one list per chunk read. Past a limit it raises,
    after yielding the whole lines before the point where the limit was crossed."""
    line_limit = body_limit(server)
    room = server.options.of(HttpOptions).max_stream_body
    pending: list[bytes] = []  # pieces of the line not finished yet
    pending_size = 0
    async for chunk in _chunks(request, server.options.of(HttpOptions).body_timeout):
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
            limit = server.options.of(HttpOptions).max_stream_body
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
            await response.write(_sse(event.outcome, encode(ack_event(event))))
    except ConnectionError:
        pass  # the subscriber went away
    finally:
        subscription.close()
    return response


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def openapi(request: web.Request) -> web.Response:
    return reply(document(ROUTES, PREFIX))


#: Methods read with GET (no body); every other unary method is a POST with a JSON body.
GET = frozenset({"Ping", "Presence", "Distribution", "Stats", "Nodes", "AckEvents"})
#: The streaming methods, each in its HTTP form.
STREAMING: dict[str, Handler] = {"PushStream": push_stream, "AckEvents": ack_events}


def _routes() -> tuple[tuple[str, str, Handler, str], ...]:
    """One route per method of im.v1.Im, named as the method in snake case."""
    routes = []
    for method in SERVICE.methods:
        verb = "GET" if method.name in GET else "POST"
        handler = STREAMING.get(method.name) or unary(method, verb)
        path = "/" + "".join(f"_{c.lower()}" if c.isupper() else c for c in method.name)[1:]
        routes.append((verb, path, handler, method.name))
    return (*routes, ("GET", "/openapi.json", openapi, ""))


#: (HTTP method, path under PREFIX, handler, im.v1.Im method it serves).
ROUTES = _routes()
OPEN_PATHS = frozenset({f"{PREFIX}/openapi.json"})


# --- auth and errors -------------------------------------------------------------------


def _authorized(request: web.Request, key: bytes) -> bool:
    headers = request.headers
    return key_matches(key, headers.get("X-API-Key"), headers.get("Authorization"))


#: Unary API paths by the im.v1 method they serve: tracked in ``server.calls``.
TRACKED = {PREFIX + path: name for _, path, _, name in ROUTES if name and name not in STREAMING}


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    name = TRACKED.get(request.path)
    if name is None:  # a stream, the OpenAPI document or an unknown path
        return await _answer(request, handler)
    with request.app[API_SERVER].calls.track("http", name, request.remote) as call:
        response = await _answer(request, handler)
        call.status = response.status
        return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
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


@web.middleware
async def client_cert_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mutual TLS (``--tls-client-ca``): the listener asks every client for a
    certificate and verifies one that is presented; the API routes also require it."""
    transport = request.transport
    if request.path not in OPEN_PATHS and not (
        transport is not None and transport.get_extra_info("peercert")
    ):
        return json_error(401, "a client certificate signed by the server's client CA is required")
    return await handler(request)


def api_app(server: Server, *, client_cert: bool = False) -> web.Application:
    """The sub-application mounted at ``/api/v1``. Its body limit is the root
    app's (aiohttp applies that one): ``HttpTransport.build_app`` sets it.
    ``client_cert``: every route but the OpenAPI document requires a verified
    client certificate (the listener's TLS context asks for one)."""
    opts = server.options
    middlewares = [api_middleware]
    if client_cert:  # inside api_middleware: a refusal is tracked like any answer
        middlewares.append(client_cert_middleware)
    app = web.Application(middlewares=middlewares)
    app[API_SERVER] = server
    app[API_METHODS] = ImMethods(server)
    app[API_KEY] = (opts.api_key or "").encode()
    for method, path, handler, _ in ROUTES:
        app.router.add_route(method, path, handler)
    return app
