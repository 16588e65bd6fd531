"""Node-to-node messages are versioned: a node refuses a version it does not speak
with one log line and no answer, and keeps serving (over a real Redis / NATS)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from im_client import Client
from im_core import Server
from im_plugins.cluster import wire

from .cluster import NATS_URL, REDIS_URL, broker_options, cleanup, new_prefix
from .conftest import MakeServer, eventually

Connect = Callable[..., Awaitable[Client]]
STRANGER = 4242  # the origin of the hand-made messages: no node of the cluster

V99_PUSH = orjson.dumps([99, "push", STRANGER, 0, "all", [], [], 0]) + b"\nfrom the future"
UNVERSIONED_PUSH = orjson.dumps({"t": "push", "o": STRANGER, "k": "all"}) + b"\nfrom the past"


class Cluster:
    """Nodes on a private prefix, plus a raw client of the same broker."""

    def __init__(self, broker: str, make_server: MakeServer) -> None:
        self.broker, self.prefix, self.make_server = broker, new_prefix(), make_server
        self.raw: Any = None

    async def node(self) -> Server:
        opts = broker_options(self.broker, self.prefix)
        return await self.make_server(broker=self.broker, plugin=opts)

    async def open(self) -> None:
        if self.broker == "redis":
            import redis.asyncio as aioredis

            self.raw = aioredis.Redis.from_url(REDIS_URL)
        else:
            import nats

            self.raw = await nats.connect(NATS_URL)

    async def close(self) -> None:
        await self.raw.aclose() if self.broker == "redis" else await self.raw.close()
        await cleanup(self.broker, self.prefix)

    def inbox_of(self, node_id: int) -> str:
        sep = ":" if self.broker == "redis" else "."
        return sep.join((self.prefix, "n", str(node_id)))

    async def send(self, node: Server, data: bytes) -> None:
        """Put ``data`` on the node's own channel / subject, as a peer would."""
        await self.raw.publish(self.inbox_of(node.node_id), data)
        if self.broker == "nats":
            await self.raw.flush()

    async def ask(self, node: Server, message: list[Any], payload: bytes) -> bytes | None:
        """Send a request to ``node``; its answer, or None when it stays silent."""
        data = orjson.dumps(message) + b"\n" + payload
        if self.broker == "nats":
            try:
                reply = await self.raw.request(self.inbox_of(node.node_id), data, timeout=0.5)
            except TimeoutError:  # nats.errors.TimeoutError is one
                return None
            return bytes(reply.data)
        pubsub = self.raw.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.inbox_of(STRANGER))  # where replies to STRANGER go
        try:
            await self.send(node, data)
            deadline = asyncio.get_running_loop().time() + 0.5
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                # None also for the (ignored) subscribe confirmation: read on.
                got = await pubsub.get_message(timeout=left)
                if got is not None:
                    return bytes(got["data"])
            return None
        finally:
            await pubsub.aclose()


@pytest.fixture(params=["redis", "nats"])
async def cluster(
    request: pytest.FixtureRequest, make_server: MakeServer
) -> AsyncIterator[Cluster]:
    c = Cluster(request.param, make_server)
    await c.open()
    yield c
    await c.close()


def refusals(caplog: pytest.LogCaptureFixture, version: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "im.cluster" and f"wire version {version} " in r.getMessage()
    ]


async def test_a_node_refuses_another_wire_version_with_one_log_line(
    cluster: Cluster, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="im.cluster")
    a, b = await cluster.node(), await cluster.node()
    alice = await connect(b, "alice")
    await eventually(lambda: _online(a, "alice"))

    for _ in range(3):
        await cluster.send(b, V99_PUSH)
        await cluster.send(b, UNVERSIONED_PUSH)

    await eventually(lambda: refusals(caplog, 99) and refusals(caplog, 0))
    await asyncio.sleep(0.1)  # the other two of each arrived meanwhile
    [line] = refusals(caplog, 99)
    assert f"from node {STRANGER}" in line and f"this node speaks {wire.VERSION}" in line
    assert len(refusals(caplog, 0)) == 1  # the format from before versions: "version 0"
    with pytest.raises(TimeoutError):
        await alice.receive(timeout=0.2)  # neither was delivered

    # The node keeps working with nodes of its own version.
    assert (await a.push("alice", b"still here")).missing == ()
    assert (await alice.receive()).data == b"still here"
    a.broadcast(b"everyone")
    assert (await alice.receive()).data == b"everyone"


async def test_a_request_of_another_wire_version_gets_no_answer(
    cluster: Cluster, connect: Connect
) -> None:
    node = await cluster.node()
    alice = await connect(node, "alice")
    await eventually(lambda: _online(node, "alice"))

    # The same request in this node's version is answered: per push, the users not
    # reached (none of alice's two pushes; bob is not here).
    rows = [[["alice"], 0, 2], [["alice", "bob"], 0, 3]]
    request = [wire.VERSION, "pushes", STRANGER, 7, rows]
    answer = await cluster.ask(node, request, b"hiyo!")
    assert answer is not None
    head, _, _ = answer.partition(b"\n")
    assert orjson.loads(head) == [wire.VERSION, "missed", node.node_id, 7, [[], ["bob"]]]
    assert [(await alice.receive()).data for _ in range(2)] == [b"hi", b"yo!"]

    # In the next version it is not: the sender sees what it sees of a hung node.
    request = [wire.VERSION + 1, "pushes", STRANGER, 8, [[["alice"], 0, 1]]]
    assert await cluster.ask(node, request, b"x") is None
    with pytest.raises(TimeoutError):
        await alice.receive(timeout=0.2)


async def _online(server: Server, user: str) -> bool:
    return await server.presence(user) is not None


async def test_broadcasts_travelling_together_are_delivered_in_order(
    cluster: Cluster, connect: Connect
) -> None:
    """``broadcasts``: several broadcasts in one message, each with its message id
    and size in the header; a copy of an id already delivered (a broadcast sent again
    after a broker failure) is dropped, in ``broadcasts`` or as a ``push``."""
    node = await cluster.node()
    alice = await connect(node, "alice")
    await eventually(lambda: _online(node, "alice"))
    rows = [[11, 0, 2], [12, 0, 3], [13, 0, 0]]
    head = orjson.dumps([wire.VERSION, "broadcasts", STRANGER, 0, rows])
    await cluster.send(node, head + b"\nhiyo!")
    assert [(await alice.receive()).data for _ in range(3)] == [b"hi", b"yo!", b""]
    again = orjson.dumps([wire.VERSION, "broadcasts", STRANGER, 0, [[12, 0, 3], [14, 0, 4]]])
    await cluster.send(node, again + b"\nyo!new!")
    for mid, payload in ((13, b""), (15, b"last")):
        push = orjson.dumps([wire.VERSION, "push", STRANGER, mid, "all", [], [], 0])
        await cluster.send(node, push + b"\n" + payload)
    assert [(await alice.receive()).data for _ in range(2)] == [b"new!", b"last"]
