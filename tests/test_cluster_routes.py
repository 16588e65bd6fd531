"""A node remembers where it found a user of another node and pushes there without
a presence lookup; a route gone stale still delivers (docs/cluster.md, "Routes")."""

from __future__ import annotations

from im_core import Server
from im_core.errors import CloseCode

from .cluster import record_deliveries
from .conftest import eventually
from .test_cluster import Connect, Node, node, visible

__all__ = ["node"]  # the fixture, parametrized over the brokers


def lookups(server: Server) -> int:
    trips = server.broker.round_trips().get("presence_lookup")  # type: ignore[union-attr]
    return 0 if trips is None else trips.seconds.count


async def offline(server: Server, user: str) -> None:
    async def check() -> bool:
        return await server.presence(user) is None

    await eventually(check)


async def test_a_known_user_is_pushed_to_without_a_lookup(node: Node, connect: Connect) -> None:
    a, c = await node(), await node()
    alice = await connect(a, "alice")
    await visible(c, "alice")
    assert (await c.push("alice", b"one")).missing == ()
    before = lookups(c)
    for i in range(3):
        assert (await c.push("alice", b"%d" % i)).missing == ()
    assert lookups(c) == before
    assert [(await alice.receive()).data for _ in range(4)] == [b"one", b"0", b"1", b"2"]


async def test_a_push_follows_a_user_who_moved_to_another_node(
    node: Node, connect: Connect
) -> None:
    a, b, c = await node(), await node(), await node()
    seen = {s: record_deliveries(s) for s in (a, b)}
    alice = await connect(a, "alice")
    await visible(c, "alice")
    assert (await c.push("alice", b"one")).missing == ()  # c learns: alice is on a
    assert (await alice.receive()).data == b"one"
    await alice.close()
    await offline(c, "alice")
    alice = await connect(b, "alice")
    await visible(c, "alice")

    assert (await c.push("alice", b"two")).missing == ()  # a: "not here"; then b
    assert (await alice.receive()).data == b"two"
    assert (await c.push("alice", b"three")).missing == ()  # straight to b
    assert (await alice.receive()).data == b"three"
    assert [p.users for p in seen[a]] == [("alice",), ("alice",)]
    assert [p.users for p in seen[b]] == [("alice",), ("alice",)]


async def test_a_push_follows_a_login_that_replaced_the_known_one(
    node: Node, connect: Connect
) -> None:
    a, b, c = await node(), await node(), await node()
    first = await connect(a, "alice")
    await visible(c, "alice")
    assert (await c.push("alice", b"one")).missing == ()
    assert (await first.receive()).data == b"one"
    second = await connect(b, "alice")
    assert await first.wait_closed() == CloseCode.REPLACED
    await eventually(lambda: a.local.local_count() == 0)

    assert (await c.push("alice", b"two", ack=True)).missing == ()
    assert (await second.receive()).data == b"two"


async def test_a_user_gone_from_a_known_node_is_reported_missing(
    node: Node, connect: Connect
) -> None:
    a, c = await node(), await node()
    alice = await connect(a, "alice")
    await visible(c, "alice")
    assert (await c.push("alice", b"one")).missing == ()
    await alice.close()
    await offline(c, "alice")
    assert (await c.push("alice", b"two")).missing == ("alice",)
    assert (await c.push(["alice", "ghost"], b"three")).missing == ("alice", "ghost")


async def test_a_user_who_logs_in_here_is_not_looked_for_where_they_were(
    node: Node, connect: Connect
) -> None:
    a, b, c = await node(), await node(), await node()
    seen = record_deliveries(a)
    alice = await connect(a, "alice")
    await visible(c, "alice")
    assert (await c.push("alice", b"one")).missing == ()
    await alice.close()
    await offline(c, "alice")
    alice = await connect(c, "alice")  # c forgets that alice was on a
    await visible(c, "alice")
    await alice.close()
    await offline(c, "alice")
    alice = await connect(b, "alice")
    await visible(c, "alice")
    assert (await c.push("alice", b"two")).missing == ()
    assert (await alice.receive()).data == b"two"
    assert [p.users for p in seen] == [("alice",)]  # a was not asked again


async def test_a_node_whose_login_was_replaced_learns_where_the_user_went(
    node: Node, connect: Connect
) -> None:
    b, c = await node(), await node()
    first = await connect(c, "alice")
    await visible(b, "alice")
    second = await connect(b, "alice")  # b asks c to close the first login
    assert await first.wait_closed() == CloseCode.REPLACED
    await eventually(lambda: c.local.local_count() == 0)
    before = lookups(c)
    assert (await c.push("alice", b"hi")).missing == ()
    assert (await second.receive()).data == b"hi"
    assert lookups(c) == before
