"""Failures: a node killed with SIGKILL, the broker restarting mid-run."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from im_client import Client
from im_core import Server
from im_core.errors import Unavailable
from im_plugins.cluster.base import LEAVING_IN_FLIGHT

from .cluster import (
    BrokerProcess,
    NodeProcess,
    broker_options,
    cleanup,
    new_prefix,
    require_broker,
)
from .conftest import MakeServer, eventually, http_url

Connect = Callable[..., Awaitable[Client]]

TTL = 1.0


@pytest.fixture(params=["redis", "nats"])
def broker(request: pytest.FixtureRequest) -> str:
    require_broker(request.param)
    return str(request.param)


async def test_killed_node_drops_out_within_the_ttl(broker: str, make_server: MakeServer) -> None:
    prefix = new_prefix()
    opts = broker_options(broker, prefix, presence_ttl=TTL)
    url_flag = ["--redis-url", opts["redis_url"]] if broker == "redis" else []
    if broker == "nats":
        url_flag = ["--nats-url", opts["nats_url"]]
    args = ["--broker", broker, "--broker-prefix", prefix, "--presence-ttl", str(TTL), *url_flag]
    procs = [NodeProcess(args), NodeProcess(args)]
    clients: list[Client] = []
    here: Server | None = None
    try:
        ids = [(await p.ready())["node"] for p in procs]
        assert len(set(ids)) == 2
        here = await make_server(broker=broker, plugin={**opts, "broker_timeout": 0.3})
        for i, p in enumerate(procs):
            client = Client(p.ws_url, f"user{i}", heartbeat=None)
            await client.connect()
            clients.append(client)
        await eventually(lambda: _count(here, 2))
        assert (await here.push(["user0", "user1"], b"hi")).missing == ()
        for client in clients:
            assert (await client.receive()).data == b"hi"

        # A hung node: its users are reported not reached after broker_timeout.
        procs[0].proc.send_signal(signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert (await here.push("user0", b"stuck")).missing == ("user0",)
        assert 0.25 < loop.time() - start < 1.0
        procs[0].proc.send_signal(signal.SIGCONT)
        assert (await clients[0].receive()).data == b"stuck"  # it did arrive, late

        procs[0].kill()
        killed = loop.time()
        # A dead node answers no push: at once "not online" (no subscriber left).
        assert (await here.push("user0", b"lost?")).missing == ("user0",)

        # Gone from the count and from presence (two reads of the broker: wait for both).
        async def gone() -> bool:
            return await _count(here, 1) and await here.presence("user0") is None

        await eventually(gone, timeout=TTL * 3 + 2)
        gone_after = loop.time() - killed
        assert gone_after <= TTL + TTL / 3 + 1.0  # the documented bound, plus slack
        assert (await here.push("user1", b"still here")).missing == ()
        assert (await clients[1].receive()).data == b"still here"
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        for p in procs:
            p.kill()
        if here is not None:
            await here.stop()
        await cleanup(broker, prefix, opts.get("redis_url"))


async def _count(server: Server, n: int) -> bool:
    return await server.online_count() == n


@pytest.fixture
async def own_broker(broker: str) -> AsyncIterator[BrokerProcess]:
    proc = BrokerProcess(broker)
    await proc.start()
    yield proc
    await proc.close()


async def _status(server: Server, path: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(http_url(server, path)) as resp:
            return resp.status


async def two_nodes(
    broker: str,
    own_broker: BrokerProcess,
    make_server: MakeServer,
    connect: Connect,
    **options: Any,
) -> tuple[Server, Server, Client, Client]:
    """Nodes a and b on ``own_broker`` (0.5 s timeout; more broker ``options``), alice
    on a and bob on b, both tagged "t", each seen by the cluster."""
    opts = broker_options(broker, new_prefix(), own_broker.url, broker_timeout=0.5, **options)
    a = await make_server(broker=broker, plugin=opts)
    b = await make_server(broker=broker, plugin=opts)
    alice = await connect(a, "alice", tags=["t"])
    bob = await connect(b, "bob", tags=["t"])
    await eventually(lambda: _count(a, 2))
    return a, b, alice, bob


async def test_broker_restart_is_survived(
    broker: str, own_broker: BrokerProcess, make_server: MakeServer, connect: Connect
) -> None:
    a, b, alice, bob = await two_nodes(broker, own_broker, make_server, connect)

    await own_broker.kill()
    await eventually(lambda: not a.broker.healthy() and not b.broker.healthy())  # type: ignore[union-attr]
    assert await _status(a, "/ready") == 503  # send traffic elsewhere
    assert await _status(a, "/health") == 200  # but alive: restarting would not help
    # Local connections stay and local pushes still work.
    assert (await a.push("alice", b"local")).missing == ()
    assert (await alice.receive()).data == b"local"
    # An acked push too: not kept in the broker now, but delivered and tracked here.
    acked = await a.push("alice", b"acked", ack=True)
    assert acked.missing == () and acked.sid
    got = await alice.receive()
    assert (got.sid, got.data) == (acked.sid, b"acked")
    await alice.ack(got.sid)
    await eventually(lambda: not a.acks.has("alice"))
    a.broadcast(b"only here")  # a broadcast still reaches the node's own users
    assert (await alice.receive()).data == b"only here"
    # Calls that need the broker fail fast instead of hanging.
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(Unavailable):
        await a.push("bob", b"remote")
    with pytest.raises(Unavailable):
        await a.online_count()
    assert loop.time() - start < 2.0
    assert a.local.local_count() == 1 and b.local.local_count() == 1

    await own_broker.start()  # restarted empty
    await eventually(lambda: a.broker.healthy() and b.broker.healthy(), timeout=10)  # type: ignore[union-attr]
    assert await _status(a, "/ready") == 200
    await eventually(lambda: _count(a, 2), timeout=5)
    assert (await a.push("bob", b"remote again")).missing == ()
    a.push_tags(["t"], b"tagged")
    assert (await alice.receive()).data == b"tagged"
    # The broadcast made during the outage was held for the broker: it reaches b
    # once a publish goes through (a first one may meet a stale connection and wait
    # for the next heartbeat), so possibly after later pushes; at most once.
    got = []
    while b"tagged" not in got:
        got.append((await bob.receive()).data)
    assert [d for d in got if d != b"only here"] == [b"remote again", b"tagged"]
    assert got.count(b"only here") <= 1


async def test_a_disconnect_during_an_outage_still_records_when_the_user_left(
    broker: str, own_broker: BrokerProcess, make_server: MakeServer, connect: Connect
) -> None:
    """The last-seen time decides which kept tag pushes a user missed: a disconnect
    the broker did not hear of writes it once the broker is back."""
    opts = broker_options(broker, new_prefix(), own_broker.url, broker_timeout=0.5)
    a = await make_server(broker=broker, plugin=opts)
    ann = await connect(a, "ann", tags=["news"])
    await eventually(lambda: _count(a, 1))
    await own_broker.kill()
    await eventually(lambda: not a.broker.healthy())  # type: ignore[union-attr]
    await ann.close()
    await eventually(lambda: a.local.local_count() == 0)

    await own_broker.start()  # restarted (Redis: empty)
    await eventually(lambda: a.broker.healthy(), timeout=10)  # type: ignore[union-attr]
    await eventually(lambda: not a.broker._unseen, timeout=10)  # type: ignore[union-attr]
    sid = a.push_tags(["news"], b"while away", store=True).sid
    await eventually(lambda: a.queue_length == 0)
    again = await connect(a, "ann", tags=["news"])
    got = await again.receive()
    assert (got.sid, got.data) == (sid, b"while away")


async def test_users_who_leave_while_the_broker_stalls_are_not_left_online(
    broker: str, own_broker: BrokerProcess, make_server: MakeServer, connect: Connect
) -> None:
    """A disconnect whose presence write times out (the broker stalled, not lost
    its data) removes the user's entry once the broker answers again: re-registering
    only the users still here would leave the others "online" for good."""
    opts = broker_options(broker, new_prefix(), own_broker.url, broker_timeout=0.5)
    a = await make_server(broker=broker, plugin=opts)
    b = await make_server(broker=broker, plugin=opts)
    ann = await connect(a, "ann")
    bob = await connect(a, "bob")
    await eventually(lambda: _count(b, 2))
    assert own_broker.proc is not None
    own_broker.proc.send_signal(signal.SIGSTOP)
    try:
        await ann.close()
        await eventually(lambda: not a.broker.healthy(), timeout=5)  # type: ignore[union-attr]
        await eventually(lambda: a.local.local_count() == 1)
    finally:
        own_broker.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: a.broker.healthy(), timeout=10)  # type: ignore[union-attr]

    async def ann_gone() -> bool:
        return await b.presence("ann") is None and (await b.presence("bob")) is not None

    await eventually(ann_gone, timeout=10)
    assert [p.user_id for p in await b.devices("bob")] == ["bob"]
    assert (await b.push("ann", b"x")).missing == ("ann",)
    assert (await b.push("bob", b"here")).missing == ()
    assert (await bob.receive()).data == b"here"


async def test_broadcasts_the_broker_did_not_take_reach_the_other_nodes_when_it_is_back(
    broker: str, own_broker: BrokerProcess, make_server: MakeServer, connect: Connect
) -> None:
    """The caller was told a broadcast was queued: one published while the broker
    stalls (not yet known) and one while it is known down both reach the other
    node once it answers again, in order; the node's own users get them at once."""
    a, _, alice, bob = await two_nodes(broker, own_broker, make_server, connect)
    assert own_broker.proc is not None
    own_broker.proc.send_signal(signal.SIGSTOP)
    try:
        a.broadcast(b"first")  # the broker's stall is not known yet
        with pytest.raises(Unavailable):
            await a.online_count()
        await eventually(lambda: not a.broker.healthy(), timeout=5)  # type: ignore[union-attr]
        a.broadcast(b"second")
        a.push_tags(["t"], b"third")
        for data in (b"first", b"second", b"third"):
            assert (await alice.receive()).data == data
    finally:
        own_broker.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: a.broker.healthy(), timeout=15)  # type: ignore[union-attr]
    assert [(await bob.receive(timeout=10)).data for _ in range(3)] == [
        b"first", b"second", b"third"
    ]
    a.broadcast(b"after")
    assert (await bob.receive()).data == b"after"
    assert (await alice.receive()).data == b"after"  # nothing twice


async def _raw_clients(server: Server, users: list[str]) -> list[asyncio.StreamWriter]:
    """Upgraded WebSocket sockets, opened 50 at a time, that never read."""
    url = http_url(server).split("//", 1)[1].split("/", 1)[0]
    host, port = url.rsplit(":", 1)
    writers: list[asyncio.StreamWriter] = []

    async def one(user: str) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET /conn?token={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writers.append(writer)

    for i in range(0, len(users), 50):
        await asyncio.gather(*(one(u) for u in users[i : i + 50]))
    return writers


async def test_thousands_dropping_at_once_do_not_make_a_broker_outage(
    broker: str, make_server: MakeServer
) -> None:
    """Every socket of a node closing together (a proxy restarting) queues its
    presence writes instead of racing one broker timeout: the disconnects do not all
    time out together, the broker is healthy again, and nobody is left online."""
    opts = broker_options(broker, new_prefix(), broker_timeout=0.5)
    a = await make_server(broker=broker, plugin=opts)
    users = [f"m{i}" for i in range(3000)]
    writers = await _raw_clients(a, users)
    await eventually(lambda: _count(a, len(users)), timeout=30)
    for writer in writers:
        writer.transport.abort()
    await eventually(lambda: a.local.local_count() == 0)
    await eventually(lambda: _count(a, 0), timeout=30)
    trips = a.broker.round_trips()  # type: ignore[union-attr]
    # All 3,000 writes racing one timeout made an outage of a busy broker. A loop busy
    # closing 3,000 sockets on a loaded machine may still stall one window of
    # in-flight writes (at most 64) past this short timeout: those are written once
    # the broker answers, which the last assertion checks.
    assert trips["unregister"].errors <= 2 * LEAVING_IN_FLIGHT
    await eventually(lambda: a.broker.healthy())  # type: ignore[union-attr]
    assert all([await a.presence(u) is None for u in users[::100]])
