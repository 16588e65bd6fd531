"""The Python client: decoded pushes, acks, reconnect with backoff, close codes."""

from __future__ import annotations

import pytest

from im_client import Client
from im_core import CloseCode, Server

from .conftest import eventually, ws_url


async def test_reconnects_after_a_reconnectable_close(server: Server) -> None:
    async with Client(ws_url(server), "rita", reconnect=True, backoff=(0.01, 0.1)) as client:
        await eventually(lambda: server.local.local_count() == 1)
        first = server.buckets.get("rita")
        first.close(CloseCode.HEARTBEAT_TIMEOUT, "test")  # 4000: the client should come back
        await eventually(
            lambda: client.connects == 2 and server.buckets.get("rita") not in (None, first)
        )
        await server.push("rita", b"after reconnect")
        assert (await client.receive()).data == b"after reconnect"


async def test_does_not_reconnect_after_kick(server: Server) -> None:
    async with Client(ws_url(server), "sam", reconnect=True, backoff=(0.01, 0.1)) as client:
        await eventually(lambda: server.local.local_count() == 1)
        await server.kick("sam")
        assert await client.wait_closed() == CloseCode.KICKED
        assert client.connects == 1


@pytest.mark.parametrize("codec", ["json", "protobuf"])
async def test_auto_ack_and_send(make_server, codec: str) -> None:
    acked = []

    from im_core import hookimpl

    class Log:
        @hookimpl
        def im_acked(self, sid: int) -> None:
            acked.append(sid)

    server = await make_server(plugins=(Log(),))
    async with Client(ws_url(server), "tom", codec=codec, auto_ack=True) as client:
        await eventually(lambda: server.local.local_count() == 1)
        result = await server.push("tom", b"\x00ack me", ack=True)
        msg = await client.receive()
        assert (msg.sid, msg.data) == (result.sid, b"\x00ack me")
        await eventually(lambda: acked == [result.sid])
