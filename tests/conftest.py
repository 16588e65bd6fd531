"""Fixtures: real servers on ephemeral ports, real WebSocket clients."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_tools import protoc

from im_client import Client
from im_core import Options, Server
from im_core.plugins import get_plugin_manager

from .api_clients import ORIGINAL, GrpcApi, HttpApi, grpc_target, http_base


def ws_url(server: Server) -> str:
    """The WebSocket endpoint (an https:// URL when the port serves TLS: aiohttp
    and im_client take it for wss://)."""
    return http_url(server, "/conn")


def http_url(server: Server, path: str = "") -> str:
    http = next(t for t in server.transports if t.name == "http")
    return f"{http.scheme}://127.0.0.1:{http.port}{path}"


MakeServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    """Start servers on free ports with the given options (and extra plugin objects)."""
    servers: list[Server] = []

    async def make(*, plugins: tuple[Any, ...] = (), names: tuple[str, ...] = (), **kw: Any):
        opts = Options.from_values(host="127.0.0.1", http_port=0, rpc_port=0, **kw)
        pm = get_plugin_manager(names, autoload=False)
        for plugin in plugins:
            pm.register(plugin)
        server = Server(opts, pm)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def server(make_server: MakeServer) -> Server:
    return await make_server()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Open clients that are closed after the test."""
    clients: list[Client] = []

    async def open_client(server: Server, token: str, **kw: Any) -> Client:
        client = Client(ws_url(server), token, **kw)
        clients.append(client)
        await client.connect()
        return client

    yield open_client
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait until ``check()`` is truthy (awaiting it if it returns an awaitable)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# --- push API clients (tests/api_clients.py) -------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def channel() -> AsyncIterator[Callable[[Server], grpc.aio.Channel]]:
    """Open gRPC channels to a server's gRPC port (``credentials``: over TLS),
    closed after the test."""
    channels: list[grpc.aio.Channel] = []

    def open_channel(
        server: Server, credentials: grpc.ChannelCredentials | None = None
    ) -> grpc.aio.Channel:
        target = grpc_target(server)
        if credentials is None:
            ch = grpc.aio.insecure_channel(target)
        else:  # TLS (tests/test_tls.py)
            ch = grpc.aio.secure_channel(target, credentials)
        channels.append(ch)
        return ch

    yield open_channel
    for ch in channels:
        await ch.close()


@pytest.fixture(params=["grpc", "http"])
def api(request: pytest.FixtureRequest, channel, session) -> Callable[..., GrpcApi | HttpApi]:
    """``api(server, key=None)``: a client of the push API, once per transport."""

    def make(server: Server, key: str | None = None) -> GrpcApi | HttpApi:
        if request.param == "grpc":
            return GrpcApi(channel(server), (("x-api-key", key),) if key else ())
        return HttpApi(session, http_base(server), {"X-API-Key": key} if key else None)

    return make


@pytest.fixture(scope="session")
def original_stubs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Python stubs generated from the original's interface alone."""
    out = tmp_path_factory.mktemp("original")
    code = protoc.main(
        [
            "protoc",
            f"-I{ORIGINAL}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "basic.proto",
        ]
    )
    assert code == 0
    return out
