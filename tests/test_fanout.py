"""Writing to sockets: a fan-out written in slices, and the opt-in write delay."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

from im_core import CloseCode, ConfigError, Server, hookimpl

from .conftest import eventually
from .test_push import clients, drained


async def test_sliced_broadcast_then_unicast_to_the_last_slice_keeps_order(
    make_server, connect
) -> None:
    server = await make_server(fanout_slice=1)  # one connection written per loop turn
    users = [f"u{i}" for i in range(8)]
    c = await clients(server, connect, {u: () for u in users})
    for round_ in range(3):
        server.broadcast(f"b{round_}".encode())
        await server.queue.drain(5)  # handed to every connection; most not written yet
        await server.push(users[-1], f"u{round_}".encode())
    for user in users:
        got = await drained(c[user])
        if user == users[-1]:
            assert got == [b"b0", b"u0", b"b1", b"u1", b"b2", b"u2"]
        else:
            assert got == [b"b0", b"b1", b"b2"]


async def test_sliced_fanout_reaches_everyone_once_in_order(make_server, connect) -> None:
    server = await make_server(fanout_slice=2, broadcast_workers=1)
    c = await clients(server, connect, {f"u{i}": () for i in range(7)})
    for i in range(30):
        server.broadcast(str(i).encode())
        if i % 3 == 0:
            await asyncio.sleep(0)  # let slices interleave with the next broadcasts
    for client in c.values():
        assert [int((await client.receive()).data) for _ in range(30)] == list(range(30))
        assert await drained(client) == []


async def _raw_client(
    server: Server, user: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that shows how the server's bytes were read off the socket."""
    http = next(t for t in server.transports if t.name == "http")
    reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /conn?token={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


def _frames(data: bytes) -> list[bytes]:
    """Payloads of unmasked server frames with 7-bit lengths (small pushes)."""
    out = []
    while data:
        n = data[1] & 0x7F
        assert n < 126
        out.append(data[2 : 2 + n])
        data = data[2 + n :]
    return out


async def test_write_delay_writes_awaited_pushes_together(make_server) -> None:
    server = await make_server(write_delay=300)
    reader, writer = await _raw_client(server, "w")
    try:
        await eventually(lambda: server.local.local_count() == 1)
        for i in range(3):  # each awaited: three loop turns, one socket write
            await server.push("w", f"m{i}".encode())
        with pytest.raises(TimeoutError):  # held back for the delay, not written yet
            await asyncio.wait_for(reader.read(1 << 16), 0.1)
        first = await asyncio.wait_for(reader.read(1 << 16), 5)
        got = [base64.b64decode(json.loads(f)["msg"]) for f in _frames(first)]
        assert got == [b"m0", b"m1", b"m2"]  # the JSON codec's push frames
    finally:
        writer.close()


async def test_write_delay_zero_writes_each_turn(make_server) -> None:
    server = await make_server()  # the default: no delay
    reader, writer = await _raw_client(server, "w")
    try:
        await eventually(lambda: server.local.local_count() == 1)
        await server.push("w", b"m0")
        first = await asyncio.wait_for(reader.read(1 << 16), 5)
        assert len(_frames(first)) == 1
    finally:
        writer.close()


async def test_closing_writes_what_the_delay_held_back(make_server, connect) -> None:
    server = await make_server(write_delay=1000)
    c = await clients(server, connect, {"k": ()})
    await server.push("k", b"last words")
    assert await server.kick("k", "bye")
    assert (await c["k"].receive(timeout=0.5)).data == b"last words"


async def test_write_delay_keeps_the_slow_consumer_limit(make_server) -> None:
    closed: list[int] = []

    class Watch:
        @hookimpl
        def im_disconnected(self, code: int) -> None:
            closed.append(code)

    server = await make_server(
        plugins=(Watch(),), write_delay=5, client_buffer=4, client_buffer_bytes=256 * 1024
    )
    _, writer = await _raw_client(server, "slow")  # never reads
    try:
        await eventually(lambda: server.local.local_count() == 1)
        missing: tuple[str, ...] = ()
        for _ in range(2000):
            missing = (await server.push("slow", b"y" * 32 * 1024)).missing
            if missing:
                break
            await asyncio.sleep(0.006)  # past the delay: the frames are written
        assert missing == ("slow",)
        await eventually(lambda: closed == [CloseCode.SLOW_CONSUMER])
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("option", "value"), [("write_delay", -1), ("write_delay", 5000), ("fanout_slice", 0)]
)
async def test_bad_write_options_are_refused(make_server, option: str, value: int) -> None:
    with pytest.raises((ConfigError, ValueError), match=option):
        await make_server(**{option: value})
