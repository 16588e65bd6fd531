"""Pushing: one user, many, everyone, tags, per-tag content; limits and control."""

from __future__ import annotations

import asyncio
import socket

import pytest

from im_client import Client
from im_core import CloseCode, Server, hookimpl
from im_core.errors import Busy, InvalidArgument, NotFound, PayloadTooLarge

from .conftest import eventually, ws_url


async def clients(server: Server, connect, spec: dict[str, tuple[str, ...]]) -> dict[str, Client]:
    out = {user: await connect(server, user, tags=tags) for user, tags in spec.items()}
    await eventually(lambda: server.local.local_count() == len(spec))
    return out


async def drained(client: Client) -> list[bytes]:
    """Everything the client has received so far (waits briefly for stragglers)."""
    got = []
    while True:
        try:
            got.append((await client.receive(timeout=0.2)).data)
        except TimeoutError:
            return got


async def test_push_to_one_and_many(server: Server, connect) -> None:
    c = await clients(server, connect, {"a": (), "b": (), "c": ()})
    assert (await server.push("a", b"one")).missing == ()
    result = await server.push(["a", "b", "ghost"], b"many")
    assert result.missing == ("ghost",)
    assert await drained(c["a"]) == [b"one", b"many"]
    assert await drained(c["b"]) == [b"many"]
    assert await drained(c["c"]) == []


async def test_push_one_to_offline_user_is_not_found(server: Server) -> None:
    with pytest.raises(NotFound):
        await server.push_one("nobody", b"x")


async def test_broadcast_reaches_everyone_in_order(server: Server, connect) -> None:
    c = await clients(server, connect, {f"u{i}": () for i in range(5)})
    for i in range(20):
        server.broadcast(f"m{i}".encode())
    expected = [f"m{i}".encode() for i in range(20)]
    for client in c.values():
        got = [(await client.receive()).data for _ in range(20)]
        assert sorted(got) == sorted(expected)


async def test_broadcast_order_with_one_worker(make_server, connect) -> None:
    server = await make_server(broadcast_workers=1)
    c = await clients(server, connect, {"x": ()})
    for i in range(50):
        server.broadcast(str(i).encode())
    assert [int((await c["x"].receive()).data) for _ in range(50)] == list(range(50))


async def test_tag_push_any_and_all(server: Server, connect) -> None:
    c = await clients(
        server,
        connect,
        {"v1": ("v1",), "v2": ("v2",), "both": ("v1", "v2"), "none": ()},
    )
    server.push_tags(["v1", "v2"], b"any")
    server.push_tags(["v1", "v2"], b"all", match="all")
    server.push_tags(["v1"], b"v1 only")
    assert sorted(await drained(c["v1"])) == [b"any", b"v1 only"]
    assert await drained(c["v2"]) == [b"any"]
    assert sorted(await drained(c["both"])) == [b"all", b"any", b"v1 only"]
    assert await drained(c["none"]) == []


async def test_push_by_tag_gives_each_tag_its_content(server: Server, connect) -> None:
    c = await clients(server, connect, {"old": ("v1",), "new": ("v2",)})
    length = server.push_by_tag({"v1": b"for v1", "v2": b"for v2"})
    assert length >= 0
    assert await drained(c["old"]) == [b"for v1"]
    assert await drained(c["new"]) == [b"for v2"]


async def test_bad_pushes_are_refused_clearly(server: Server) -> None:
    too_big = b"x" * (server.options.max_message_size + 1)
    with pytest.raises(PayloadTooLarge):
        await server.push("a", too_big)
    with pytest.raises(PayloadTooLarge):
        server.broadcast(too_big)
    with pytest.raises(InvalidArgument):
        await server.push([], b"x")
    with pytest.raises(InvalidArgument):
        server.push_tags([], b"x")
    with pytest.raises(InvalidArgument):
        server.push_tags(["t"], b"x", match="some")
    with pytest.raises(InvalidArgument):
        server.push_by_tag({})


async def test_full_broadcast_queue_says_busy(make_server, connect) -> None:
    server = await make_server(broadcast_buffer=10, broadcast_workers=1)
    await clients(server, connect, {"a": ()})
    # Without yielding to the loop the workers cannot drain: 80 % of 10 fit.
    queued = [server.broadcast(b"x").queue_length for _ in range(8)]
    assert queued == list(range(1, 9))
    with pytest.raises(Busy) as info:
        server.broadcast(b"x")
    assert info.value.queue_length == 8
    with pytest.raises(Busy):
        server.push_by_tag({"a": b"1"})
    await eventually(lambda: server.queue_length == 0)
    server.broadcast(b"fits again")


async def test_online_count_and_distribution(server: Server, connect) -> None:
    c = await clients(server, connect, {"a": ("room",), "b": ("room", "vip"), "c": ()})
    assert await server.online_count() == 3
    dist = await server.distribution()
    assert {t: s.number for t, s in dist.items()} == {"room": 2, "vip": 1}
    assert dist["room"].created > 0
    await c["b"].close()
    await eventually(lambda: server.local.local_count() == 2)
    dist = await server.distribution()
    assert {t: s.number for t, s in dist.items()} == {"room": 1, "vip": 0}
    presence = await server.presence("a")
    assert presence is not None and presence.tags == ("room",)
    assert await server.presence("b") is None


async def test_empty_tag_groups_are_cleaned_up(make_server, connect) -> None:
    server = await make_server(tag_cleanup_interval=0.05, tag_empty_ttl=0.1)
    c = await clients(server, connect, {"a": ("temp",)})
    await c["a"].close()
    await eventually(lambda: "temp" not in server.tags.groups)


async def test_retag_and_kick(server: Server, connect) -> None:
    c = await clients(server, connect, {"a": ("old",)})
    assert await server.retag("a", add=["new"], remove=["old"])
    assert not await server.retag("ghost", add=["x"])
    server.push_tags(["old"], b"to old")
    server.push_tags(["new"], b"to new")
    assert await drained(c["a"]) == [b"to new"]
    assert await server.kick("a", "bye")
    assert await c["a"].wait_closed() == CloseCode.KICKED
    assert not await server.kick("a")


async def test_slow_consumer_is_closed_and_push_reports_it(make_server) -> None:
    closed: list[int] = []

    class Watch:
        @hookimpl
        def im_disconnected(self, code: int) -> None:
            closed.append(code)

    server = await make_server(plugins=(Watch(),), client_buffer=4, client_buffer_bytes=256 * 1024)
    port = int(ws_url(server).split(":")[2].split("/")[0])
    # A client that completes the upgrade and then never reads.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /conn?token=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    try:
        await eventually(lambda: server.local.local_count() == 1)
        payload = b"y" * 32 * 1024
        missing: tuple[str, ...] = ()
        for _ in range(2000):
            missing = (await server.push("slow", payload)).missing
            if missing:
                break
            await asyncio.sleep(0)  # let the outbox write
        assert missing == ("slow",)
        await eventually(lambda: closed == [CloseCode.SLOW_CONSUMER])
        assert server.local.local_count() == 0
    finally:
        sock.close()
