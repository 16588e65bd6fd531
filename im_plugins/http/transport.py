"""The aiohttp application and its lifecycle (start, stop accepting, close)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from im_plugins.tls import TlsOptions

from .api import PREFIX, api_app, body_limit
from .front import Edge, FrontSite
from .options import HttpOptions
from .quiet import QuietServerLog
from .sse import SESSIONS, Sessions, send, stream
from .upgrade import SERVER, websocket

if TYPE_CHECKING:
    from im_core.server import Server

log = logging.getLogger("im.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK = ("127.0.0.1", "::1", "localhost")


async def ping(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    return web.json_response({"status": 200, "data": "pong", "node": server.node_id})


def _state(server: Server, ok: bool) -> web.Response:
    broker = server.broker
    body = {
        "status": "ok" if ok else "unavailable",
        "node": server.node_id,
        "ready": server.ready(),
        "draining": server.draining,
        "broker": {
            "name": broker.name if broker else None,
            "healthy": broker is not None and broker.healthy(),
        },
        "connections": server.local.local_count(),
    }
    return web.json_response(body, status=200 if ok else 503)


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves, whatever the broker (restarting a node
    does not bring its broker back)."""
    return _state(request.app[SERVER], True)


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 when the node should get traffic (started, broker reachable,
    not draining), else 503, so a load balancer sends elsewhere."""
    server = request.app[SERVER]
    return _state(server, server.ready())


class HttpTransport:
    name = "http"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._site: FrontSite | None = None
        self.edge: Edge | None = None
        self.tls: ssl.SSLContext | None = None  # wss:// and HTTPS when set

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def build_app(self, server: Server) -> web.Application:
        # aiohttp takes the body limit from the root app, not from the sub-app that
        # serves the API, so the limit is set here; handler_args reach each
        # connection's RequestHandler: bad requests log one line, no traceback.
        app = self.app = web.Application(
            client_max_size=body_limit(server),
            handler_args={"logger": QuietServerLog()},
        )
        app[SERVER] = server
        app.router.add_get("/conn", websocket)
        app.router.add_get("/chat", websocket)
        app[SESSIONS] = Sessions()
        app.router.add_get("/sse", stream, allow_head=False)
        app.router.add_post("/sse/send", send)
        app.router.add_get("/ping", ping)
        app.router.add_get("/health", health)
        app.router.add_get("/ready", ready)
        tls = server.options.of(TlsOptions)
        app.add_subapp(PREFIX, api_app(server, client_cert=tls.mutual))

        def add_get(path: str, handler: Handler) -> None:  # im_http_routes
            app.router.add_get(path, handler)

        server.hooks.http_routes(add_get, server)
        return app

    async def start(self, server: Server) -> None:
        opts = server.options.of(HttpOptions)
        tls = server.options.of(TlsOptions)
        self.tls = tls.server_context() if tls.enabled else None
        self._runner = web.AppRunner(
            self.build_app(server),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=server.options.drain_timeout,  # in-flight HTTP calls
            # Requests after the first on a keep-alive connection are parsed by
            # aiohttp: the same bounds as the front's (which reads every first head).
            keepalive_timeout=opts.keepalive_timeout,
            max_line_size=opts.max_header_size,
            max_field_size=opts.max_header_size,
            max_headers=opts.max_headers,
        )
        await self._runner.setup()
        self._site = FrontSite(self._runner, server, self.host, self.port, self.tls)
        await self._site.start()
        self.edge = self._site.edge
        sockets = self._runner.server and self._site._server.sockets  # type: ignore[union-attr]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        open_api = not (server.options.api_key or server.options.of(TlsOptions).mutual)
        if open_api and self.host not in LOOPBACK:
            log.warning(
                "HTTP API on %s:%s%s is open to anyone who can reach it: set --api-key",
                self.host,
                self.port,
                PREFIX,
            )

    async def stop_accepting(self) -> None:
        if self._site is not None:
            await self._site.stop()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
