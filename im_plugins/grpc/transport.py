"""The gRPC listener: ``im.basic.Basic``, ``im.v1.Im``, health checking and
reflection on ``--rpc-port`` (over TLS with ``--tls-cert``/``--tls-key``; with
``--tls-client-ca`` every call needs a client certificate signed by that CA);
optionally a loopback-only, key-less, plain listener serving ``im.basic`` for
original backends that cannot send an API key."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from im_plugins.limits import request_limit
from im_plugins.pb import basic_pb2, basic_pb2_grpc, im_v1_pb2, im_v1_pb2_grpc
from im_plugins.tls import TlsOptions

from .auth import ApiKeyInterceptor
from .basic import BasicServicer
from .calls import CallsInterceptor
from .checked import register
from .options import GrpcOptions
from .v1 import ImServicer

if TYPE_CHECKING:
    from im_core.server import Server

log = logging.getLogger("im.grpc")

LOOPBACK = ("127.0.0.1", "::1", "localhost")
BASIC = basic_pb2.DESCRIPTOR.services_by_name["Basic"].full_name
V1 = im_v1_pb2.DESCRIPTOR.services_by_name["Im"].full_name


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def credentials(tls: TlsOptions) -> grpc.ServerCredentials:
    """TLS for the main listener; with a client CA, the handshake requires a client
    certificate it signed (gRPC has no "ask but do not require" for servers)."""
    key, chain, ca = tls.grpc_files()
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
    )


class GrpcTransport:
    name = "grpc"

    def __init__(
        self, host: str, port: int, local_port: int | None = None, grace: float = 5.0
    ) -> None:
        self.host = host
        self.grace = grace
        self.port = port
        self.local_port = local_port
        self._servers: list[grpc.aio.Server] = []
        self._stopping: list[asyncio.Future[None]] = []
        self.health = health.aio.HealthServicer()

    def _new_server(
        self, server: Server, interceptors: list[grpc.aio.ServerInterceptor]
    ) -> grpc.aio.Server:
        opts = server.options
        grpc_server = grpc.aio.server(
            interceptors=interceptors,
            # past it: RESOURCE_EXHAUSTED
            maximum_concurrent_rpcs=opts.of(GrpcOptions).max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", request_limit(opts.max_message_size)),
                # A taken port is an error, not a shared port, unless the node is one
                # of the workers that share it (--workers).
                ("grpc.so_reuseport", int(opts.reuse_port)),
            ],
        )
        self._servers.append(grpc_server)
        return grpc_server

    def _bind(
        self,
        grpc_server: grpc.aio.Server,
        host: str,
        port: int,
        secure: grpc.ServerCredentials | None = None,
    ) -> int:
        address = _address(host, port)
        try:
            if secure is None:
                bound: int = grpc_server.add_insecure_port(address)
            else:
                bound = grpc_server.add_secure_port(address, secure)
        except RuntimeError as exc:
            raise OSError(f"grpc: cannot listen on {address}: {exc}") from None
        if not bound:
            raise OSError(f"grpc: cannot listen on {address}")
        return bound

    async def start(self, server: Server) -> None:
        key = server.options.api_key
        interceptors: list[grpc.aio.ServerInterceptor] = [ApiKeyInterceptor(key)] if key else []
        if server.options.access_log or logging.getLogger("im.api").isEnabledFor(logging.DEBUG):
            interceptors.append(CallsInterceptor(server.calls))  # only then: a cost per call
        main = self._new_server(server, interceptors)
        basic = BasicServicer(server)
        register(basic_pb2_grpc.add_BasicServicer_to_server, basic, main)
        register(im_v1_pb2_grpc.add_ImServicer_to_server, ImServicer(server), main)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, main)
        reflection.enable_server_reflection(
            (BASIC, V1, health.SERVICE_NAME, reflection.SERVICE_NAME), main
        )
        tls = server.options.of(TlsOptions)
        secure = credentials(tls) if tls.enabled else None
        self.port = self._bind(main, self.host, self.port, secure)
        if not (key or tls.mutual) and self.host not in LOOPBACK:
            log.warning(
                "gRPC API on %s is open to anyone who can reach it: set --api-key",
                _address(self.host, self.port),
            )
        if self.local_port is not None:
            local = self._new_server(server, [])
            register(basic_pb2_grpc.add_BasicServicer_to_server, basic, local)
            self.local_port = self._bind(local, "127.0.0.1", self.local_port)
            log.info("im.basic without API key on 127.0.0.1:%d (loopback only)", self.local_port)
        for grpc_server in self._servers:
            await grpc_server.start()
        for service in ("", BASIC, V1):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop_accepting(self) -> None:
        """Refuse new calls at once; in-flight calls get ``drain_timeout`` to finish."""
        await self.health.enter_graceful_shutdown()
        self._stopping = [asyncio.ensure_future(s.stop(self.grace)) for s in self._servers]

    async def close(self) -> None:
        if not self._stopping:
            await self.stop_accepting()
        await asyncio.gather(*self._stopping)
        self._servers.clear()
