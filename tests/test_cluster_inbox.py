"""Kept entries in a cluster (Redis, NATS): the offline inbox is served by any node,
bounded cluster-wide and expired with an outcome; unacked messages outlive the
node that tracked them (SIGKILL), and a restarted single node redelivers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from im_client import Client
from im_core import Server

from .cluster import NodeProcess, broker_options, cleanup, new_prefix, require_broker
from .conftest import MakeServer, eventually, ws_url
from .test_cluster import visible
from .test_cluster_acks import Hooks

TTL = 1.0


class Cluster:
    """In-process nodes and ``im-run`` processes of one private cluster."""

    def __init__(self, broker: str, make_server: MakeServer) -> None:
        self.broker = broker
        self.prefix = new_prefix()
        self.opts = broker_options(broker, self.prefix, presence_ttl=TTL)
        self.make_server = make_server
        self.hooks: dict[Server, Hooks] = {}
        self.procs: list[NodeProcess] = []
        self.clients: list[Client] = []

    async def node(self, **kw: Any) -> Server:
        seen = Hooks()
        kw.setdefault("ack_interval", 5.0)
        server = await self.make_server(
            broker=self.broker, plugin=self.opts, plugins=(seen,), **kw
        )
        self.hooks[server] = seen
        return server

    async def process(self, *extra: str) -> NodeProcess:
        url = self.opts["redis_url" if self.broker == "redis" else "nats_url"]
        args = [
            "--broker", self.broker, "--broker-prefix", self.prefix,
            "--presence-ttl", str(TTL), f"--{self.broker}-url", url, *extra,
        ]  # fmt: skip
        proc = NodeProcess(args)
        self.procs.append(proc)
        await proc.ready()
        return proc

    async def client(self, url: str, user: str, **kw: Any) -> Client:
        client = Client(url, user, heartbeat=None, **kw)
        self.clients.append(client)
        await client.connect()
        return client


@pytest.fixture(params=["redis", "nats"])
async def cluster(
    request: pytest.FixtureRequest, make_server: MakeServer
) -> AsyncIterator[Cluster]:
    require_broker(request.param)
    c = Cluster(request.param, make_server)
    yield c
    await asyncio.gather(*(client.close() for client in c.clients), return_exceptions=True)
    for proc in c.procs:
        proc.kill()
    for server in list(c.hooks):
        await server.stop()
    await cleanup(c.broker, c.prefix)


async def test_a_kept_push_is_served_by_any_node(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    first = await a.push(["ann", "bob"], b"while away", store=True)
    assert first.stored == ("ann", "bob") and first.missing == ()
    second = await b.push("ann", b"and this", store=True)
    ann = await cluster.client(ws_url(b), "ann")
    got = [await ann.receive() for _ in range(2)]
    assert [(m.sid, m.data) for m in got] == [(first.sid, b"while away"), (second.sid, b"and this")]
    for m in got:
        await ann.ack(m.sid)
    # Each outcome reaches the node that took its push.
    await eventually(lambda: [o.sid for o in cluster.hooks[a].outcomes] == [first.sid])
    await eventually(lambda: [o.sid for o in cluster.hooks[b].outcomes] == [second.sid])
    await ann.close()
    bob = await cluster.client(ws_url(a), "bob")
    assert (await bob.receive()).sid == first.sid
    ann = await cluster.client(ws_url(a), "ann")
    with pytest.raises(TimeoutError):
        await ann.receive(timeout=0.5)  # acked: gone from the inbox


async def test_the_inbox_bound_holds_across_nodes(cluster: Cluster) -> None:
    a = await cluster.node(inbox_max_messages=2)
    b = await cluster.node(inbox_max_messages=2)
    assert (await a.push("cat", b"1", store=True)).stored == ("cat",)
    assert (await b.push("cat", b"2", store=True)).stored == ("cat",)
    full = await a.push(["cat", "dan"], b"3", store=True)
    assert full.missing == ("cat",) and full.stored == ("dan",)


async def test_an_expired_kept_push_is_reported_offline_to_its_origin(cluster: Cluster) -> None:
    a, b = await cluster.node(inbox_ttl=0.5), await cluster.node(inbox_ttl=0.5)
    kept = await a.push("eve", b"too late", store=True)
    # Swept within a second on Redis, five on NATS (its sweep reads every inbox).
    await eventually(lambda: [o.reason for o in cluster.hooks[a].outcomes] == ["offline"], 10)
    outcome = cluster.hooks[a].outcomes[0]
    assert (outcome.outcome, outcome.sid, outcome.payload) == ("expired", kept.sid, b"too late")
    swept = [h.expired for h in cluster.hooks.values() if h.expired]
    assert swept == [[("eve", kept.sid, 0, "offline")]]  # one node claimed it
    eve = await cluster.client(ws_url(b), "eve")
    with pytest.raises(TimeoutError):
        await eve.receive(timeout=0.5)


async def test_unacked_messages_outlive_a_killed_node(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    doomed = await cluster.process()
    fay = await cluster.client(doomed.ws_url, "fay")
    await visible(a, "fay")
    sids = [(await a.push("fay", f"m{i}".encode(), ack=True)).sid for i in range(3)]
    assert [(await fay.receive()).sid for _ in range(3)] == sids  # sent, not acked
    doomed.kill()
    await fay.close()
    again = await cluster.client(ws_url(b), "fay")
    got = [await again.receive() for _ in range(3)]
    assert [(m.sid, m.data) for m in got] == [(s, f"m{i}".encode()) for i, s in enumerate(sids)]
    for m in got:
        await again.ack(m.sid)
    await eventually(lambda: sorted(o.sid for o in cluster.hooks[a].outcomes) == sorted(sids))
    assert {o.outcome for o in cluster.hooks[a].outcomes} == {"acked"}
    with pytest.raises(TimeoutError):
        await again.receive(timeout=0.5)  # exactly once per sid after the ack


async def test_a_restarted_single_node_redelivers(cluster: Cluster) -> None:
    node = await cluster.process()
    gus = await cluster.client(node.ws_url, "gus")
    base = f"http://127.0.0.1:{node.port}/api/v1"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/push_user", json={"user": "gus", "text": "keep me", "ack": True}
        ) as resp:
            assert resp.status == 200
            sid = (await resp.json())["sid"]
    assert (await gus.receive()).sid == sid
    node.kill()
    await gus.close()
    restarted = await cluster.process()
    again = await cluster.client(restarted.ws_url, "gus")
    got = await again.receive(timeout=5)
    assert (got.sid, got.data) == (sid, b"keep me")


async def test_a_stored_tag_push_reaches_members_who_were_away(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    ivy = await cluster.client(ws_url(a), "ivy", tags=["news"])
    await visible(b, "ivy")
    await ivy.close()  # seen on node a, then away
    await eventually(lambda: a.local.local_count() == 0)
    await eventually(lambda: _offline(b, "ivy"))
    sid = b.push_tags(["news"], b"extra", store=True).sid
    await eventually(lambda: b.queue_length == 0)
    again = await cluster.client(ws_url(b), "ivy", tags=["news"])
    got = await again.receive()
    assert (got.sid, got.data) == (sid, b"extra")
    await again.ack(sid)
    await eventually(lambda: [o.sid for o in cluster.hooks[b].outcomes] == [sid])
    new = await cluster.client(ws_url(a), "kim", tags=["news"])  # never seen: not a member then
    with pytest.raises(TimeoutError):
        await new.receive(timeout=0.5)


async def _offline(server: Server, user: str) -> bool:
    return await server.presence(user) is None


async def test_a_push_too_big_to_copy_per_user_is_not_kept(cluster: Cluster) -> None:
    """One copy per user in the broker: a push past --inbox-max-push-bytes of copies
    is not kept (offline users are missing), so one request cannot fill the broker."""
    a = await cluster.node(inbox_max_push_bytes=1000)
    users = [f"u{i}" for i in range(11)]
    big = await a.push(users, b"x" * 100, store=True)
    assert big.stored == () and big.missing == tuple(users)
    small = await a.push(users[:10], b"x" * 100, store=True)
    assert small.stored == tuple(users[:10])
