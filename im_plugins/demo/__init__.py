"""A browser demo page at ``GET /demo`` on the HTTP port (not loaded by default).

``im-run --plugin im_plugins.demo``, then open ``http://127.0.0.1:8080/demo``: log in
as a user (the token, with the default ``token_auth``), receive and ack pushes over
WebSocket or SSE (``?transport=sse``), and push to a user, a tag or everyone through
the HTTP API. One self-contained file, ``page.html``: no external assets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib.resources import files

from aiohttp import web

from im_core import hookimpl

PATH = "/demo"


@cache
def page() -> bytes:
    return files(__package__).joinpath("page.html").read_bytes()


async def demo(request: web.Request) -> web.Response:
    return web.Response(
        body=page(),
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


@hookimpl
def im_http_routes(
    add_get: Callable[[str, Callable[[web.Request], Awaitable[web.StreamResponse]]], None],
) -> None:
    add_get(PATH, demo)
