"""Peer servers for the benchmarks. Each serves the routes the harness drives im's
push API with, without the ``/api/v1`` prefix (``bench.servers``): ``GET /stats``,
``POST /broadcast``, ``POST /push_stream`` (NDJSON), ``POST /push_user``, and the
socket.io peer ``POST /push_ack`` (emit with a callback, answered once acked)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import orjson
from aiohttp import web


def reply(body: dict) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def data(obj: dict) -> bytes:
    return base64.b64decode(obj["data_b64"])


async def stream_lines(request: web.Request) -> Iterator[dict]:
    """The NDJSON body's objects (bodies here are small: read whole)."""
    body = await request.read()
    return (orjson.loads(line) for line in body.split(b"\n") if line.strip())
