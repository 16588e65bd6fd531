"""A cluster of nodes over a real broker (Redis, NATS): pushes reach only the nodes
that hold their targets, state is cluster-wide, one login per user."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from im_client import Client
from im_core import Server
from im_core.ack import node_of
from im_core.errors import CloseCode

from .cluster import broker_options, cleanup, new_prefix, record_deliveries, require_broker
from .conftest import MakeServer, eventually, http_url
from .test_acks import AckLog
from .test_sse import Stream

Connect = Callable[..., Awaitable[Client]]
Node = Callable[..., Awaitable[Server]]


@pytest.fixture(params=["redis", "nats"])
async def node(request: pytest.FixtureRequest, make_server: MakeServer) -> AsyncIterator[Node]:
    """Start nodes of one cluster (a private broker prefix, cleaned up afterwards)."""
    broker, prefix = request.param, new_prefix()
    require_broker(broker)
    started: list[Server] = []

    async def make(**kw: Any) -> Server:
        server = await make_server(broker=broker, plugin=broker_options(broker, prefix), **kw)
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        await server.stop()
    await cleanup(broker, prefix)


async def visible(server: Server, *users: str) -> None:
    """Wait until ``server`` sees ``users`` online (a client's connect returns right
    after the upgrade, a moment before its node has registered it)."""

    async def check() -> bool:
        return all([await server.presence(u) is not None for u in users])

    await eventually(check)


async def nothing_more(client: Client) -> None:
    with pytest.raises(TimeoutError):
        await client.receive(timeout=0.15)


async def test_nodes_get_distinct_ids(node: Node) -> None:
    servers = [await node() for _ in range(3)]
    assert len({s.node_id for s in servers}) == 3
    assert all(0 <= s.node_id < 1024 for s in servers)


async def test_user_pushes_go_only_to_holding_nodes(node: Node, connect: Connect) -> None:
    a, b, c = await node(), await node(), await node()
    seen = {s: record_deliveries(s) for s in (b, c)}
    alice = await connect(b, "alice")
    bob = await connect(a, "bob")
    await visible(a, "alice", "bob")

    assert (await a.push("alice", b"one")).missing == ()
    assert (await alice.receive()).data == b"one"

    result = await a.push(["alice", "bob", "ghost"], b"many")
    assert result.missing == ("ghost",)
    assert (await alice.receive()).data == b"many"
    assert (await bob.receive()).data == b"many"
    assert [p.users for p in seen[b]] == [("alice",), ("alice",)]  # ghost: nobody asked
    assert seen[c] == []  # c holds nobody: never asked

    assert (await c.push("ghost", b"x")).missing == ("ghost",)
    await nothing_more(alice)


async def test_broadcast_reaches_every_node_once(node: Node, connect: Connect) -> None:
    servers = [await node(), await node(), await node()]
    seen = [record_deliveries(s) for s in servers]
    clients = [await connect(s, f"u{i}{j}") for i, s in enumerate(servers) for j in range(2)]
    await visible(servers[1], *(f"u{i}{j}" for i in range(3) for j in range(2)))
    servers[1].broadcast(b"to all")
    for client in clients:
        assert (await client.receive()).data == b"to all"
    for client in clients:
        await nothing_more(client)
    assert [len(s) for s in seen] == [1, 1, 1]


async def test_tag_pushes_reach_members_only(node: Node, connect: Connect) -> None:
    a, b, c = await node(), await node(), await node()
    seen_b = record_deliveries(b)
    u1 = await connect(a, "u1", tags=["x"])
    u2 = await connect(b, "u2", tags=["x", "y"])
    u3 = await connect(c, "u3", tags=["z"])
    await visible(a, "u1", "u2", "u3")

    c.push_tags(["x"], b"x-any")
    assert (await u1.receive()).data == b"x-any"
    assert (await u2.receive()).data == b"x-any"

    a.push_tags(["x", "y"], b"x-and-y", match="all")
    assert (await u2.receive()).data == b"x-and-y"

    a.push_tags(["y", "z"], b"y-or-z")
    assert (await u2.receive()).data == b"y-or-z"
    assert (await u3.receive()).data == b"y-or-z"

    delivered_to_b = len(seen_b)
    a.push_tags(["z"], b"z only")
    assert (await u3.receive()).data == b"z only"
    assert len(seen_b) == delivered_to_b  # b has no member of z: not routed there

    a.push_by_tag({"x": b"for x", "z": b"for z"})
    assert (await u1.receive()).data == b"for x"
    assert (await u2.receive()).data == b"for x"
    assert (await u3.receive()).data == b"for z"
    for client in (u1, u2, u3):
        await nothing_more(client)


async def test_counts_presence_and_distribution_are_cluster_wide(
    node: Node, connect: Connect
) -> None:
    a, b = await node(), await node()
    await connect(a, "u1", tags=["v1"])
    await connect(a, "u2", tags=["v2"])
    u3 = await connect(b, "u3", tags=["v1"])
    for s in (a, b):
        await eventually(lambda s=s: _count_is(s, 3))
    where = await a.presence("u3")
    assert where is not None and where.node_id == b.node_id and where.tags == ("v1",)
    assert await b.presence("nobody") is None

    async def dist_ok() -> bool:
        dist = await a.distribution()
        return {t: s.number for t, s in dist.items()} == {"v1": 2, "v2": 1}

    await eventually(dist_ok)
    await u3.close()
    await eventually(lambda: _count_is(a, 2))
    assert await a.presence("u3") is None


async def _count_is(server: Server, n: int) -> bool:
    return await server.online_count() == n


async def test_nodes_lists_the_live_nodes_with_their_numbers(node: Node, connect: Connect) -> None:
    a, b = await node(), await node()
    await connect(a, "u1")
    await connect(a, "u2")
    await connect(b, "u3")

    async def nodes_are(server: Server, want: list[tuple[int, int, int]]) -> bool:
        got = [(n.node_id, n.users, n.connections) for n in await server.nodes()]
        return got == want

    want = sorted([(a.node_id, 2, 2), (b.node_id, 1, 1)])
    for s in (a, b):
        await eventually(lambda s=s: nodes_are(s, want))
    await b.stop()  # leaves the cluster: gone from the list at once
    await eventually(lambda: nodes_are(a, [(a.node_id, 2, 2)]))


async def test_every_read_of_the_count_and_distribution_is_exact(
    node: Node, connect: Connect
) -> None:
    """Nodes rewrite their entries (heartbeats) while others read them: no read may
    miss a node or wait for the next write."""
    a, b = await node(), await node()
    await connect(a, "alice", tags=["t"])
    await connect(b, "bob", tags=["t"])

    async def exact(server: Server) -> bool:
        dist = {t: s.number for t, s in (await server.distribution()).items()}
        return await _count_is(server, 2) and dist == {"t": 2}

    async def both_exact() -> bool:
        return await exact(a) and await exact(b)

    await eventually(both_exact)
    loop = asyncio.get_running_loop()
    end = loop.time() + float(a.options.plugin["presence_ttl"])  # three heartbeats
    reads = 0
    while loop.time() < end:
        assert await exact((a, b)[reads % 2]), f"read {reads}"
        reads += 1


async def test_second_login_on_another_node_replaces_the_first(
    node: Node, connect: Connect
) -> None:
    a, b = await node(), await node()
    first = await connect(a, "alice")
    await visible(b, "alice")
    second = await connect(b, "alice")
    assert await first.wait_closed() == CloseCode.REPLACED
    await eventually(lambda: a.local.local_count() == 0)
    where = await a.presence("alice")
    assert where is not None and where.node_id == b.node_id
    assert (await a.push("alice", b"hi")).missing == ()
    assert (await second.receive()).data == b"hi"
    await eventually(lambda: _count_is(a, 1))


async def test_kick_and_retag_on_the_holding_node(node: Node, connect: Connect) -> None:
    a, b = await node(), await node()
    alice = await connect(b, "alice")
    bob = await connect(b, "bob")
    await visible(a, "alice", "bob")
    assert await a.retag("alice", add=["vip"])
    a.push_tags(["vip"], b"vip news")
    assert (await alice.receive()).data == b"vip news"
    await nothing_more(bob)
    assert await a.kick("bob", "go away")
    assert await bob.wait_closed() == CloseCode.KICKED
    assert not await a.kick("nobody")


async def test_acks_work_on_the_node_holding_the_user(node: Node, connect: Connect) -> None:
    log = AckLog()
    a = await node()
    b = await node(plugins=(log,))
    alice = await connect(b, "alice")
    await visible(a, "alice")
    result = await a.push("alice", b"important", ack=True)
    msg = await alice.receive()
    assert msg.sid == result.sid != 0 and node_of(msg.sid) == a.node_id
    await alice.ack(msg.sid)
    await eventually(lambda: log.acked == [("alice", msg.sid)])


async def test_health_endpoint_reports_the_broker(node: Node) -> None:
    a = await node()
    async with aiohttp.ClientSession() as session:
        async with session.get(http_url(a, "/health")) as resp:
            body = await resp.json()
    assert resp.status == 200 and body["broker"]["healthy"] is True


async def test_pushes_are_grouped_per_node(node: Node, connect: Connect) -> None:
    a, b = await node(), await node()
    seen = record_deliveries(b)
    clients = [await connect(b, f"user{i}") for i in range(5)]
    await visible(a, *(f"user{i}" for i in range(5)))
    result = await a.push([f"user{i}" for i in range(5)], b"grouped")
    assert result.missing == ()
    assert len(seen) == 1 and len(seen[0].users) == 5
    await asyncio.gather(*(c.receive() for c in clients))


async def test_sse_user_on_one_node_gets_a_push_made_through_another(node: Node, session) -> None:
    """Client transports sit behind one contract: cluster routing is the same for SSE."""
    a, b = await node(), await node()
    resp = await session.get(http_url(a, "/sse"), params={"token": "sse-user"})
    try:
        stream = Stream(resp)
        assert (await stream.next())["event"] == "session"
        await visible(b, "sse-user")
        assert (await b.push("sse-user", b"via b", ack=True)).missing == ()
        sid, body = await stream.message()
        assert int(sid) > 0 and base64.b64decode(body["msg"]) == b"via b"
        await eventually(lambda: _online(b, 1))  # counted cluster-wide like a WebSocket user
    finally:
        resp.close()


async def _online(server: Server, n: int) -> bool:
    return (await server.stats()).online == n
