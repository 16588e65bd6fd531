"""Liveness and readiness, and the graceful drain: /health answers while the process
serves, /ready only while the node should get traffic; on shutdown /ready turns 503
first, API calls in flight finish, then connections close with 1001."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from im_client import Client, ConnectError
from im_core import CloseCode, Server

from .conftest import eventually, http_url, ws_url


async def status(server: Server, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(http_url(server, path)) as resp:
            return resp.status, await resp.json()


async def test_health_and_ready_are_open_without_the_api_key(make_server) -> None:
    server = await make_server(api_key="secret")
    for path in ("/health", "/ready"):
        code, body = await status(server, path)
        assert code == 200 and body["status"] == "ok" and body["ready"] is True, path


async def test_the_drain_turns_ready_off_first_and_lets_calls_finish(make_server) -> None:
    server = await make_server(drain_delay=0.5, drain_timeout=5)
    alice = Client(ws_url(server), "alice")
    await alice.connect()
    await eventually(lambda: server.local.local_count() == 1)

    # An API call in flight: its body arrives slowly.
    host, port = http_url(server).removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps({"user": "alice", "text": "last words"})
    writer.write(
        b"POST /api/v1/push_user HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5]
    )
    await writer.drain()
    await asyncio.sleep(0.1)

    stopping = asyncio.create_task(server.stop())
    await eventually(lambda: server.draining)
    code, state = await status(server, "/ready")
    assert code == 503 and state["draining"] is True
    assert (await status(server, "/health"))[0] == 200  # alive all along
    with pytest.raises(ConnectError) as refused:  # no new connections while draining
        await Client(ws_url(server), "bob").connect()
    assert refused.value.status == 503

    await asyncio.sleep(0.6)  # past the delay: the drain waits for the call
    assert not stopping.done() and alice.close_code is None
    writer.write(body[5:])
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert (await alice.receive()).data == b"last words"

    await asyncio.wait_for(stopping, 10)
    assert await alice.wait_closed() == CloseCode.GOING_AWAY
    writer.close()
    await alice.close()


async def test_a_drain_does_not_wait_past_its_timeout(make_server) -> None:
    server = await make_server(drain_timeout=0.5)
    host, port = http_url(server).removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /api/v1/push_user HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    await writer.drain()
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(server.stop(), 10)  # the stalled call does not hold it
    assert loop.time() - start < 3
    writer.close()
