"""HTTP transport plugin: the WebSocket endpoint, ``/ping`` and the HTTP push API,
all on one aiohttp server (``--http-port``, default 8080), over TLS with
``--tls-cert``/``--tls-key``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from im_core import hookimpl
from im_plugins.tls import TlsOptions

from .options import HttpOptions
from .transport import HttpTransport

if TYPE_CHECKING:
    from im_core.server import Server
    from im_core.transport import Transport


@hookimpl
def im_add_options(add: Callable[..., None]) -> None:
    add(HttpOptions)
    add(TlsOptions)  # shared with the gRPC plugin


@hookimpl
def im_register_transports(register: Callable[[Transport], None], server: Server) -> None:
    register(HttpTransport(server.options.host, server.options.of(HttpOptions).http_port))
