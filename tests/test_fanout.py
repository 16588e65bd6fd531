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


@pytest.mark.parametrize(
    "opts",
    [
        {"write_delay": 200},  # everything below lands in one round
        {"fanout_slice": 1},  # one connection per loop turn: rounds overlap the pushes
        {"fanout_budget": 1, "fanout_slice": 1000},  # slices cut by time: 8 connections
    ],
)
async def test_broadcasts_tag_pushes_and_unicasts_keep_each_connections_order(
    make_server, connect, opts
) -> None:
    server = await make_server(broadcast_workers=1, **opts)
    spec = {f"u{i}": (("x",) if i % 2 else ()) for i in range(20)}
    c = await clients(server, connect, spec)
    expect: dict[str, list[bytes]] = {user: [] for user in spec}
    for i in range(4):
        server.broadcast(f"b{i}".encode())
        server.push_tags(["x"], f"t{i}".encode())
        await server.queue.drain(5)
        await server.push(["u0", "u1", "u19"], f"p{i}".encode())
        for user, tags in spec.items():
            expect[user].append(f"b{i}".encode())
            if tags:
                expect[user].append(f"t{i}".encode())
            if user in ("u0", "u1", "u19"):
                expect[user].append(f"p{i}".encode())
    await asyncio.sleep(0.4)  # past the write delay
    for user, client in c.items():
        assert await drained(client) == expect[user], user


async def test_a_broadcast_reaches_the_connections_there_when_it_was_sent(
    make_server, connect
) -> None:
    server = await make_server(write_delay=600)
    c = await clients(server, connect, {"early": ()})
    server.broadcast(b"before")
    await server.queue.drain(5)  # queued, not written: the delay holds the round
    late = await connect(server, "late")
    await eventually(lambda: server.local.local_count() == 2)
    server.broadcast(b"after")
    await asyncio.sleep(1.3)  # past two rounds' delays
    assert await drained(c["early"]) == [b"before", b"after"]
    assert await drained(late) == [b"after"]


async def test_a_connection_being_set_up_gets_the_broadcasts_sent_meanwhile(
    make_server, connect
) -> None:
    setting_up = asyncio.Event()

    class Slow:
        @hookimpl
        async def im_connected(self, conn) -> None:
            if conn.user_id == "late":
                setting_up.set()
                await asyncio.sleep(0.3)  # registered, not yet released

    server = await make_server(plugins=(Slow(),))
    c = await clients(server, connect, {"early": ()})
    joining = asyncio.ensure_future(connect(server, "late"))
    await asyncio.wait_for(setting_up.wait(), 5)
    server.broadcast(b"meanwhile")
    await server.queue.drain(5)
    assert await drained(c["early"]) == [b"meanwhile"]  # written while "late" is held
    await server.push("late", b"pushed")
    late = await joining
    assert await drained(late) == [b"meanwhile", b"pushed"]


async def test_closing_writes_the_broadcasts_queued_for_it(make_server, connect) -> None:
    server = await make_server(write_delay=1000)
    c = await clients(server, connect, {"k": (), "other": ()})
    server.broadcast(b"news")
    await server.queue.drain(5)
    assert await server.kick("k", "bye")
    assert (await c["k"].receive(timeout=0.5)).data == b"news"


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
    ("option", "value"),
    [("write_delay", -1), ("write_delay", 5000), ("fanout_slice", 0), ("fanout_budget", 0)],
)
async def test_bad_write_options_are_refused(make_server, option: str, value: int) -> None:
    with pytest.raises((ConfigError, ValueError), match=option):
        await make_server(**{option: value})


async def test_a_reader_that_stops_is_closed_by_broadcasts_and_the_rest_get_them(
    make_server, connect
) -> None:
    closed: list[tuple[str, int]] = []

    class Watch:
        @hookimpl
        def im_disconnected(self, conn, code: int) -> None:
            closed.append((conn.user_id, code))

    server = await make_server(
        plugins=(Watch(),), client_buffer=4, client_buffer_bytes=256 * 1024
    )
    c = await clients(server, connect, {"reader": ()})
    _, writer = await _raw_client(server, "stalled")  # never reads
    try:
        await eventually(lambda: server.local.local_count() == 2)
        sent = 0
        while not closed and sent < 2000:
            server.broadcast(b"y" * 32 * 1024)
            sent += 1
            await server.queue.drain(5)
            assert len((await c["reader"].receive(timeout=5)).data) == 32 * 1024
            await asyncio.sleep(0.002)
        assert closed == [("stalled", CloseCode.SLOW_CONSUMER)]
    finally:
        writer.close()
