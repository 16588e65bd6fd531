"""gRPC transport plugin: the original's ``im.basic.Basic`` (wire-compatible) and
the extended ``im.v1.Im`` on ``--rpc-port`` (default 8081), with health checking
and reflection, over TLS with ``--tls-cert``/``--tls-key``. See docs/api.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from im_core import hookimpl
from im_plugins.tls import TlsOptions

from .options import GrpcOptions
from .transport import GrpcTransport

if TYPE_CHECKING:
    from im_core.server import Server
    from im_core.transport import Transport


@hookimpl
def im_add_options(add: Callable[..., None]) -> None:
    add(GrpcOptions)
    add(TlsOptions)  # shared with the HTTP plugin


@hookimpl
def im_register_transports(register: Callable[[Transport], None], server: Server) -> None:
    opts = server.options
    own = opts.of(GrpcOptions)
    register(GrpcTransport(opts.host, own.rpc_port, own.rpc_local_port, opts.drain_timeout))
