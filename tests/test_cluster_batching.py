"""Pushes to users on another node made while a request to that node is in flight go
out together in the next request, in order; each call still gets its own answer
(docs/cluster.md, "Routes")."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from im_client import Client
from im_core import Server
from im_plugins.cluster.base import PUSHES_BYTES

from .cluster import NATS_URL, REDIS_URL, NodeProcess, broker_options, cleanup, new_prefix
from .conftest import MakeServer, eventually
from .test_cluster import Connect, Node, node, visible
from .test_cluster_failures import _count, broker

__all__ = ["broker", "node"]  # the fixtures, parametrized over the brokers

USERS = ("alice", "bob", "carol")
EACH = 40  # pushes per user
TIMEOUT = 0.5  # broker_timeout of the node whose peer hangs


def requests(server: Server) -> tuple[int, int]:
    """Requests carrying pushes to other nodes so far, and how many of them failed."""
    trips = server.broker.round_trips().get("peer_pushes")  # type: ignore[union-attr]
    return (0, 0) if trips is None else (trips.seconds.count, trips.errors)


async def test_concurrent_pushes_to_another_node_arrive_in_order_in_fewer_requests(
    node: Node, connect: Connect
) -> None:
    a, c = await node(), await node()
    clients = {u: await connect(a, u) for u in USERS}
    await visible(c, *USERS)
    for user, client in clients.items():  # c learns where they are
        assert (await c.push(user, b"hello")).missing == ()
        assert (await client.receive()).data == b"hello"

    before, _ = requests(c)
    sent = [(u, f"{u} {i}".encode()) for i in range(EACH) for u in USERS]
    results = await asyncio.gather(*(c.push(u, data) for u, data in sent))

    assert all(r.missing == () for r in results)
    for user, client in clients.items():
        got = [(await client.receive()).data for _ in range(EACH)]
        assert got == [data for u, data in sent if u == user]
    made, failed = requests(c)
    assert 1 <= made - before <= len(sent) // 4 and failed == 0


async def test_large_pushes_are_split_over_requests_in_order(
    node: Node, connect: Connect
) -> None:
    a, c = await node(), await node()
    alice = await connect(a, "alice")
    await visible(c, "alice")
    assert (await c.push("alice", b"hello")).missing == ()
    assert (await alice.receive()).data == b"hello"

    before, _ = requests(c)
    sent = [bytes([i]) * (PUSHES_BYTES // 3) for i in range(12)]  # two fit in a request
    results = await asyncio.gather(*(c.push("alice", data) for data in sent))
    assert all(r.missing == () for r in results)
    assert [(await alice.receive()).data for _ in sent] == sent
    made, _ = requests(c)
    assert len(sent) // 2 <= made - before < len(sent)


async def test_concurrent_pushes_to_users_on_two_nodes_each_get_their_own_answer(
    node: Node, connect: Connect
) -> None:
    a, b, c = await node(), await node(), await node()
    alice, bob = await connect(a, "alice"), await connect(b, "bob")
    await visible(c, "alice", "bob")
    calls = [["alice"], ["bob", "ghost"], ["alice", "bob"], ["ghost"]] * 5
    results = await asyncio.gather(*(c.push(users, b"x") for users in calls))
    assert [r.missing for r in results] == [("ghost",) if "ghost" in u else () for u in calls]
    for client, n in ((alice, 10), (bob, 10)):
        assert [(await client.receive()).data for _ in range(n)] == [b"x"] * n


async def test_a_batch_to_a_hung_or_gone_node_reports_every_callers_users(
    broker: str, make_server: MakeServer
) -> None:
    prefix = new_prefix()
    opts = broker_options(broker, prefix)
    url = ["--redis-url", opts["redis_url"]] if broker == "redis" else []
    if broker == "nats":
        url = ["--nats-url", opts["nats_url"]]
    proc = NodeProcess(["--broker", broker, "--broker-prefix", prefix, *url])
    clients: list[Client] = []
    here: Server | None = None
    try:
        await proc.ready()
        here = await make_server(broker=broker, plugin={**opts, "broker_timeout": TIMEOUT})
        for user in USERS:
            client = Client(proc.ws_url, user, heartbeat=None)
            await client.connect()
            clients.append(client)

        async def online() -> bool:
            return await here.online_count() == len(USERS)  # type: ignore[union-attr]

        await eventually(online)
        assert (await here.push(list(USERS), b"hi")).missing == ()  # routes learned
        for client in clients:
            assert (await client.receive()).data == b"hi"

        loop = asyncio.get_running_loop()
        # Hung: the request in flight and the pushes queued behind it all end after
        # about broker_timeout (not one timeout after another), each caller's users
        # not reached.
        proc.proc.send_signal(signal.SIGSTOP)
        _, failed = requests(here)
        start = loop.time()
        calls = [USERS[i % 3] for i in range(30)]
        results = await asyncio.gather(*(here.push(u, b"stuck") for u in calls))
        assert [r.missing for r in results] == [(u,) for u in calls]
        assert TIMEOUT * 0.9 < loop.time() - start < TIMEOUT * 2
        assert requests(here)[1] > failed  # counted as failed requests (metrics)
        proc.proc.send_signal(signal.SIGCONT)

        # Gone: no subscriber (or, just killed, a silent one): no caller hangs.
        proc.kill()
        start = loop.time()
        results = await asyncio.gather(*(here.push(u, b"lost?") for u in calls))
        assert [r.missing for r in results] == [(u,) for u in calls]
        assert loop.time() - start < TIMEOUT * 2
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        proc.kill()
        if here is not None:
            await here.stop()
        await cleanup(broker, prefix, opts.get("redis_url"))


async def _broker_messages(broker: str, channel: str) -> tuple[list[bytes], Any]:
    """Messages published on ``channel`` from now on, read by a plain client of the
    broker; and how to stop reading."""
    seen: list[bytes] = []
    if broker == "nats":
        import nats

        nc = await nats.connect(NATS_URL)

        async def got(msg: Any) -> None:
            seen.append(msg.data)

        await nc.subscribe(channel, cb=got)
        await nc.flush()
        return seen, nc.close
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(REDIS_URL)
    pubsub = r.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1)  # the subscription's confirmation

    async def read() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                seen.append(message["data"])

    reader = asyncio.create_task(read())

    async def stop() -> None:
        reader.cancel()
        await pubsub.aclose()
        await r.aclose()

    return seen, stop


async def test_a_burst_of_broadcasts_reaches_other_nodes_in_few_broker_messages(
    broker: str, make_server: MakeServer, connect: Connect
) -> None:
    """Broadcasts a node queues together travel to the other nodes together (wire
    ``broadcasts``), in order, each still delivered once everywhere."""
    prefix = new_prefix()
    opts = broker_options(broker, prefix)
    a = await make_server(broker=broker, plugin=opts)
    b = await make_server(broker=broker, plugin=opts)
    alice, bob = await connect(a, "alice"), await connect(b, "bob")
    await eventually(lambda: _count(a, 2))
    channel = f"{prefix}.all" if broker == "nats" else f"{prefix}:all"
    seen, stop = await _broker_messages(broker, channel)
    try:
        sent = [f"b{i}".encode() for i in range(150)]  # within the broadcast queue
        for data in sent:
            a.broadcast(data)
        assert [(await bob.receive()).data for _ in sent] == sent
        assert [(await alice.receive()).data for _ in sent] == sent
        await asyncio.sleep(0.2)  # every message the broker carried is counted
        assert 1 <= len(seen) <= 15
        a.broadcast(b"after")  # nothing came twice
        assert (await bob.receive()).data == b"after"
        assert (await alice.receive()).data == b"after"
    finally:
        await stop()
        await a.stop()
        await b.stop()
        await cleanup(broker, prefix, opts.get("redis_url"))
