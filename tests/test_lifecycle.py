"""Startup and graceful shutdown."""

from __future__ import annotations

import aiohttp
import pytest

from im_client import Client
from im_core import CloseCode, Options, Server, hookimpl
from im_core.plugins import get_plugin_manager
from im_core.server import ConfigError

from .conftest import eventually, ws_url


async def test_stop_delivers_queued_pushes_then_closes_1001() -> None:
    order: list[str] = []

    class Watch:
        @hookimpl
        def im_startup(self) -> None:
            order.append("startup")

        @hookimpl
        async def im_shutdown(self, server: Server) -> None:
            order.append(f"shutdown with {server.local.local_count()} connections")

    pm = get_plugin_manager(autoload=False)
    pm.register(Watch())
    server = Server(Options.from_values(host="127.0.0.1", http_port=0, rpc_port=0), pm)
    await server.start()
    client = Client(ws_url(server), "last")
    await client.connect()
    await eventually(lambda: server.local.local_count() == 1)
    for i in range(50):
        server.broadcast(str(i).encode())
    await server.stop()
    got = [int((await client.receive()).data) for _ in range(50)]
    assert sorted(got) == list(range(50))
    assert await client.wait_closed() == CloseCode.GOING_AWAY
    await client.close()
    assert order == ["startup", "shutdown with 0 connections"]
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(ws_url(server), params={"token": "late"})


async def test_unknown_broker_is_a_config_error() -> None:
    server = Server(
        Options.from_values(host="127.0.0.1", http_port=0, rpc_port=0, broker="carrier-pigeon"),
        get_plugin_manager(autoload=False),
    )
    with pytest.raises(ConfigError, match="carrier-pigeon"):
        await server.start()
