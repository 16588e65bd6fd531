"""Acks across a cluster (Redis, NATS): unacked messages follow their user to the
node they reconnect to, and every outcome reaches the node that took the push."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest

from im_client import Client
from im_core import Server, hookimpl
from im_core.ack import AckOutcome, node_of
from im_core.errors import CloseCode
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

from .api_clients import http_base
from .cluster import broker_options, cleanup, new_prefix, require_broker
from .conftest import MakeServer, eventually
from .test_api_streams import next_event
from .test_cluster import visible

Node = Callable[..., Awaitable[Server]]
Connect = Callable[..., Awaitable[Client]]


class Hooks:
    """What the ack hooks of one node saw."""

    def __init__(self) -> None:
        self.acked: list[tuple[str, int]] = []
        self.expired: list[tuple[str, int, int, str]] = []
        self.outcomes: list[AckOutcome] = []

    @hookimpl
    def im_acked(self, user_id: str, sid: int) -> None:
        self.acked.append((user_id, sid))

    @hookimpl
    def im_ack_expired(self, user_id: str, sid: int, tries: int, reason: str) -> None:
        self.expired.append((user_id, sid, tries, reason))

    @hookimpl
    def im_ack_outcome(self, outcome: AckOutcome) -> None:
        self.outcomes.append(outcome)


@pytest.fixture(params=["redis", "nats"])
async def node(request: pytest.FixtureRequest, make_server: MakeServer) -> AsyncIterator[Node]:
    """``node(**options)``: a node of one private cluster; ``node.hooks[server]``."""
    broker, prefix = request.param, new_prefix()
    require_broker(broker)
    started: list[Server] = []
    hooks: dict[Server, Hooks] = {}

    async def make(**kw: Any) -> Server:
        seen = Hooks()
        kw.setdefault("ack_interval", 5.0)
        server = await make_server(
            broker=broker, plugin=broker_options(broker, prefix), plugins=(seen,), **kw
        )
        hooks[server] = seen
        started.append(server)
        return server

    make.hooks = hooks  # type: ignore[attr-defined]
    yield make
    for server in reversed(started):
        await server.stop()
    await cleanup(broker, prefix)


def hooks_of(node: Node, server: Server) -> Hooks:
    return node.hooks[server]  # type: ignore[attr-defined]


async def grpc_events(server: Server, channel: Callable[[Server], grpc.aio.Channel]) -> Any:
    stub = im_v1_pb2_grpc.ImStub(channel(server))
    events = stub.AckEvents(pb.AckEventsRequest())
    await events.initial_metadata()  # subscribed
    return events


async def test_unacked_follow_the_user_to_another_node(
    node: Node, connect: Connect, channel: Any
) -> None:
    a, b, c = await node(), await node(), await node()
    events = await grpc_events(a, channel)
    first = await connect(b, "alice")
    await visible(a, "alice")
    sids = [(await a.push_one("alice", f"m{i}".encode(), ack=True)) for i in range(3)]
    assert {node_of(s) for s in sids} == {a.node_id}
    assert [(await first.receive()).sid for _ in range(3)] == sids
    await first.close()  # gone without acking
    await eventually(lambda: b.local.local_count() == 0)

    async def offline() -> bool:
        return await a.presence("alice") is None

    await eventually(offline)  # so only b's held marker can lead c to the entries
    second = await connect(c, "alice")
    got = [await second.receive() for _ in range(3)]
    assert [(m.sid, m.data) for m in got] == list(zip(sids, [b"m0", b"m1", b"m2"], strict=True))
    assert len(b.acks) == 0 and len(c.acks) == 3  # handed over, not copied
    await second.ack(*sids)

    outcomes = [await events.read() for _ in range(3)]
    assert [(e.outcome, e.user, e.sid) for e in outcomes] == [(pb.ACKED, "alice", s) for s in sids]
    assert {e.tries for e in outcomes} == {2}  # first send on b, redelivery on c
    await eventually(lambda: sorted(hooks_of(node, c).acked) == [("alice", s) for s in sids])
    assert [o.sid for o in hooks_of(node, a).outcomes] == sids
    for server in (a, b, c):
        assert hooks_of(node, server).expired == []  # b forgot them without an outcome
    assert hooks_of(node, b).acked == [] and hooks_of(node, c).outcomes == []
    events.cancel()


async def test_a_replaced_login_hands_its_unacked_to_the_new_one(
    node: Node, connect: Connect, session: aiohttp.ClientSession
) -> None:
    a, b = await node(), await node()
    first = await connect(b, "bob")
    await visible(a, "bob")
    async with session.get(http_base(a) + "/api/v1/ack_events") as stream:
        assert await stream.content.readline() == b": subscribed\n"
        await stream.content.readline()
        sid = await a.push_one("bob", b"keep me", ack=True)
        assert (await first.receive()).sid == sid
        second = await connect(a, "bob")  # while the first connection is still open
        assert await first.wait_closed() == CloseCode.REPLACED
        msg = await second.receive()
        assert (msg.sid, msg.data) == (sid, b"keep me")
        await second.ack(sid)
        name, data = await next_event(stream)
    assert (name, data["user"], data["sid"], data["tries"]) == ("acked", "bob", sid, 2)
    assert hooks_of(node, a).acked == [("bob", sid)] and hooks_of(node, b).expired == []


async def test_a_user_back_on_the_same_node_is_not_asked_elsewhere(
    node: Node, connect: Connect
) -> None:
    a, b = await node(), await node()
    first = await connect(b, "cat")
    await visible(a, "cat")
    sid = await a.push_one("cat", b"x", ack=True)
    await first.receive()
    await first.close()
    await eventually(lambda: b.local.local_count() == 0)
    second = await connect(b, "cat")
    assert (await second.receive()).sid == sid
    await second.ack(sid)
    await eventually(lambda: [o.sid for o in hooks_of(node, a).outcomes] == [sid])
    assert hooks_of(node, b).acked == [("cat", sid)]


async def test_expired_outcomes_reach_the_pushing_node(
    node: Node, connect: Connect, channel: Any
) -> None:
    fast = {"ack_interval": 0.05, "ack_max_tries": 3, "ack_keep_offline": 0.2}
    a, b = await node(**fast), await node(**fast)
    events = await grpc_events(a, channel)
    dan = await connect(b, "dan")
    eve = await connect(b, "eve")
    await visible(a, "dan", "eve")
    ignored = await a.push_one("dan", b"ignored", ack=True)
    assert [(await dan.receive()).sid for _ in range(3)] == [ignored] * 3
    first = await events.read()
    assert (first.outcome, first.user, first.sid) == (pb.EXPIRED, "dan", ignored)
    assert (first.reason, first.tries, first.data) == ("max_tries", 3, b"ignored")

    await eve.close()
    await eventually(lambda: b.local.local_count() == 1)
    away = await a.push("eve", b"nobody home", ack=True)
    assert away.missing == ("eve",)  # not delivered: nothing tracked, no outcome
    lost = await a.push_one("dan", b"then gone", ack=True)
    await dan.receive()
    await dan.close()
    second = await events.read()
    assert (second.outcome, second.sid, second.reason) == (pb.EXPIRED, lost, "offline")
    assert second.data == b"then gone"
    expired = hooks_of(node, b).expired
    assert [(u, s, r) for u, s, _, r in expired] == [
        ("dan", ignored, "max_tries"),
        ("dan", lost, "offline"),
    ]
    assert expired[0][2] == 3 and second.tries == expired[1][2] >= 1
    assert hooks_of(node, b).outcomes == []  # reported where the sid came from only
    events.cancel()
    await eventually(lambda: not a.outcomes.subscribers)


async def test_outcomes_are_reported_once_on_a_single_node(
    make_server: MakeServer, connect: Connect, session: aiohttp.ClientSession
) -> None:
    seen = Hooks()
    server = await make_server(plugins=(seen,), ack_interval=0.05, ack_max_tries=1)
    alice = await connect(server, "alice")
    await eventually(lambda: server.local.local_count() == 1)
    async with session.get(http_base(server) + "/api/v1/ack_events") as stream:
        assert await stream.content.readline() == b": subscribed\n"
        await stream.content.readline()
        sid = await server.push_one("alice", b"once", ack=True)
        await alice.ack((await alice.receive()).sid)
        expired = await server.push_one("alice", b"late", ack=True)
        events = [await next_event(stream), await next_event(stream)]
    assert [(n, d["sid"]) for n, d in events] == [("acked", sid), ("expired", expired)]
    assert base64.b64decode(events[1][1]["data_b64"]) == b"late"
    assert [(o.outcome, o.sid) for o in seen.outcomes] == [("acked", sid), ("expired", expired)]
    assert seen.acked == [("alice", sid)] and len(seen.expired) == 1


async def test_outcomes_of_an_acked_broadcast_come_back_to_its_node(
    node: Node, connect: Connect
) -> None:
    a, b, c = await node(), await node(), await node()
    users = [f"u{i}" for i in range(6)]
    clients = [await connect((b, c)[i % 2], user, auto_ack=True) for i, user in enumerate(users)]
    await visible(a, *users)
    sid = a.broadcast(b"to all, with receipts", ack=True).sid
    for client in clients:
        assert (await client.receive()).sid == sid
    await eventually(lambda: len(hooks_of(node, a).outcomes) == len(users))
    assert sorted((o.outcome, o.user_id, o.sid) for o in hooks_of(node, a).outcomes) == [
        ("acked", u, sid) for u in users
    ]
    assert len(hooks_of(node, b).acked) == len(hooks_of(node, c).acked) == 3
