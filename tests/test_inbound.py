"""Client -> server: the receive hook, acks, malformed and oversize frames, liveness."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from im_core import CloseCode, hookimpl
from im_plugins.protobuf_codec import ProtobufCodec

from .conftest import eventually, ws_url


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    @hookimpl
    async def im_receive(self, conn, data: bytes) -> None:
        self.got.append((conn.user_id, data))


@pytest.fixture
async def inbox_server(make_server):
    inbox = Inbox()
    server = await make_server(plugins=(inbox,), max_frame_size=1024)
    return server, inbox


async def test_receive_gets_exact_bytes_text_and_binary(inbox_server) -> None:
    server, inbox = inbox_server
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(server), params={"token": "u1"}) as ws:
            await ws.send_str('  {"hello": "wörld"} ')
            await ws.send_bytes(b"\x00\x01raw")
            await ws.send_str('{"ack": 5, "other": 1}')  # not an ack envelope: data
            await eventually(lambda: len(inbox.got) == 3)
    assert inbox.got == [
        ("u1", '  {"hello": "wörld"} '.encode()),
        ("u1", b"\x00\x01raw"),
        ("u1", b'{"ack": 5, "other": 1}'),
    ]


async def test_acks_never_reach_receive(inbox_server) -> None:
    server, inbox = inbox_server
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(server), params={"token": "u2"}) as ws:
            await eventually(lambda: server.local.local_count() == 1)
            result = await server.push("u2", b"m", ack=True)
            await ws.receive(timeout=5)
            await ws.send_str(f'{{"ack": {result.sid}}}')
            await ws.send_str(f'{{"ack": [{result.sid}]}}')
            await ws.send_str("after")
            await eventually(lambda: inbox.got)
            assert inbox.got == [("u2", b"after")]
            assert server.acks.pending("u2") == []


async def test_protobuf_client_frame_carries_acks_and_data(inbox_server) -> None:
    server, inbox = inbox_server
    codec = ProtobufCodec()
    async with aiohttp.ClientSession() as http:
        params = {"token": "u3", "codec": "protobuf"}
        async with http.ws_connect(ws_url(server), params=params) as ws:
            await eventually(lambda: server.local.local_count() == 1)
            result = await server.push("u3", b"m", ack=True)
            await ws.receive(timeout=5)
            await ws.send_bytes(codec.encode_client(acks=(result.sid,), data=b"\x00pb data"))
            await ws.send_bytes(b"")  # empty frame: heartbeat only
            await eventually(lambda: inbox.got)
            await asyncio.sleep(0.05)
    assert inbox.got == [("u3", b"\x00pb data")]
    assert server.acks.pending("u3") == []


@pytest.mark.parametrize(
    ("codec", "frame"),
    [
        ("json", '{"ack": "not-a-sid"}'),
        ("json", '{"ack": []}'),
        ("json", '{"ack": -3}'),
        ("protobuf", b"\xff\xff\xff"),
    ],
)
async def test_malformed_client_frame_closes_4500(inbox_server, codec, frame) -> None:
    server, inbox = inbox_server
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(server), params={"token": "u4", "codec": codec}) as ws:
            if isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame)
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == CloseCode.BAD_FRAME == 4500
    assert inbox.got == []
    await eventually(lambda: server.local.local_count() == 0)


async def test_oversize_frame_closes_1009(inbox_server) -> None:
    server, inbox = inbox_server
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(server), params={"token": "u5"}) as ws:
            await ws.send_bytes(b"x" * 2048)
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1009
    assert inbox.got == []
    await eventually(lambda: server.local.local_count() == 0)


async def test_silent_connection_times_out_4000(make_server) -> None:
    server = await make_server(heartbeat_interval=0.2)
    async with aiohttp.ClientSession() as http:
        # autoping=False: this client ignores the server's pings, like a dead peer.
        ws = await http.ws_connect(ws_url(server), params={"token": "mute"}, autoping=False)
        start = asyncio.get_running_loop().time()
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type == aiohttp.WSMsgType.PING:
                continue  # the server asks for a sign of life; we stay silent
            break
        elapsed = asyncio.get_running_loop().time() - start
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == CloseCode.HEARTBEAT_TIMEOUT == 4000
        assert elapsed >= 0.4  # never before 2 x interval
    await eventually(lambda: server.local.local_count() == 0)


@pytest.mark.parametrize("how", ["pong", "ping", "data"])
async def test_any_inbound_frame_keeps_connection_alive(make_server, how: str) -> None:
    server = await make_server(heartbeat_interval=0.2)
    async with aiohttp.ClientSession() as http:
        # "pong": answer the server's pings as a browser does; "ping"/"data": send our own.
        ws = await http.ws_connect(
            ws_url(server), params={"token": "alive"}, autoping=(how == "pong")
        )
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.2  # six heartbeat intervals
        while loop.time() < end:
            if how == "ping":
                await ws.ping()
            elif how == "data":
                await ws.send_str("beat")
            try:
                msg = await ws.receive(timeout=0.1)
            except TimeoutError:
                continue
            await asyncio.sleep(0.01)  # a sign of life, not a flood (max_inbound_rate)
            assert msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG), msg
        assert not ws.closed
        assert server.local.local_count() == 1
        await ws.close()


async def test_failing_hooks_are_contained(make_server) -> None:
    class Broken:
        @hookimpl
        def im_receive(self, data: bytes) -> None:
            raise RuntimeError("handler bug")

        @hookimpl
        def im_connected(self, conn) -> None:
            if conn.user_id == "unlucky":
                raise RuntimeError("connect bug")

    server = await make_server(plugins=(Broken(),))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(server), params={"token": "ok"}) as ws:
            await ws.send_str("boom")
            await eventually(lambda: server.local.local_count() == 1)
            await server.push("ok", b"still here")
            assert (await ws.receive(timeout=5)).data == '{"msg":"c3RpbGwgaGVyZQ=="}'
        async with http.ws_connect(ws_url(server), params={"token": "unlucky"}) as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1011
    await eventually(lambda: server.local.local_count() == 0)
