"""Presence after a retag: other nodes see the new tags, and the entry goes away
when the user disconnects or its node stops."""

from __future__ import annotations

from typing import Any

from im_core import Server

from .cluster import NATS_URL, REDIS_URL
from .conftest import eventually
from .test_cluster import Connect, Node, node, visible

__all__ = ["node"]  # the fixture, parametrized over the brokers


async def stored(server: Server, user: str) -> Any:
    """The raw presence entry of ``user`` in the broker (None when there is none),
    read with a client of its own: also after ``server`` stopped."""
    broker: Any = server.broker
    if server.options.broker == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(REDIS_URL)
        try:
            return await r.hget(f"{broker.prefix}:presence", user)
        finally:
            await r.aclose()
    import nats
    import nats.js.errors

    from im_plugins.cluster.nats.broker import user_key

    nc = await nats.connect(NATS_URL)
    try:
        kv = await nc.jetstream().key_value(f"{broker.prefix}_presence")
        try:
            entry = await kv.get(user_key(user))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return entry.value or None
    finally:
        await nc.close()


async def tags_on(server: Server, user: str) -> tuple[str, ...] | None:
    where = await server.presence(user)
    return None if where is None else where.tags


async def test_retagged_user_shows_new_tags_and_goes_offline(node: Node, connect: Connect) -> None:
    a, b = await node(), await node()
    ttl = float(a.options.plugin["presence_ttl"])
    alice = await connect(a, "alice", tags=["old"])
    await visible(b, "alice")
    assert await tags_on(b, "alice") == ("old",)

    assert await b.retag("alice", add=["new"], remove=["old"])
    assert await tags_on(b, "alice") == ("new",)

    await alice.close()
    await eventually(lambda: _offline(b, "alice"), timeout=ttl)
    await eventually(lambda: _count_is(b, 0), timeout=ttl)
    assert (await b.push("alice", b"x")).missing == ("alice",)
    assert await stored(b, "alice") is None


async def _offline(server: Server, user: str) -> bool:
    return await server.presence(user) is None


async def test_retagged_users_leave_no_entry_after_a_clean_stop(
    node: Node, connect: Connect
) -> None:
    a, b = await node(), await node()
    ttl = float(a.options.plugin["presence_ttl"])
    alice = await connect(a, "alice", tags=["t0"])
    await connect(a, "bob", tags=["t0"])
    await visible(b, "alice", "bob")
    for i in range(1, 4):
        assert await a.retag("alice", add=[f"t{i}"], remove=[f"t{i - 1}"])
        assert await b.retag("bob", add=[f"t{i}"])
    assert await tags_on(b, "alice") == ("t3",)
    assert await tags_on(b, "bob") == ("t0", "t1", "t2", "t3")

    await alice.close()  # alice leaves before the stop, bob is closed by it
    await eventually(lambda: _offline(b, "alice"), timeout=ttl)
    await a.stop()
    for user in ("alice", "bob"):
        assert await b.presence(user) is None
        assert await stored(b, user) is None
    await eventually(lambda: _count_is(b, 0), timeout=ttl)


async def _count_is(server: Server, n: int) -> bool:
    return (await server.stats()).online == n
