"""Several devices per user in a cluster (Redis, NATS): the replace rule and the
cap hold cluster-wide, a push reaches the user's devices on every node with an
ack state each, a device that moves to another node takes its own unacked
messages along, and presence, counts, retag and kick see every node."""

from __future__ import annotations

import pytest

from im_core import Server
from im_core.errors import CloseCode

from . import test_cluster_inbox
from .conftest import eventually, ws_url
from .test_cluster_inbox import Cluster

cluster = test_cluster_inbox.cluster  # the fixture: a private cluster per broker

DEVICES = 3


async def node(cluster: Cluster, **kw: object) -> Server:
    kw.setdefault("max_connections_per_user", DEVICES)
    return await cluster.node(**kw)


async def test_a_push_reaches_devices_on_every_node_each_with_its_own_acks(
    cluster: Cluster,
) -> None:
    a, b = await node(cluster, ack_interval=0.3), await node(cluster, ack_interval=0.3)
    phone = await cluster.client(ws_url(a), "ann", device="phone")
    laptop = await cluster.client(ws_url(b), "ann", device="laptop")
    await eventually(lambda: _connections(a, 2))

    result = await a.push("ann", b"hi", ack=True)
    assert result.missing == ()
    got = [await phone.receive(), await laptop.receive()]
    assert {(m.sid, m.data) for m in got} == {(result.sid, b"hi")}

    await phone.ack(result.sid)
    again = await laptop.receive()  # the laptop has not acked: re-sent to it alone
    assert again.sid == result.sid
    with pytest.raises(TimeoutError):
        await phone.receive(timeout=0.5)
    await laptop.ack(result.sid)
    outcomes = cluster.hooks[a].outcomes  # both reach the node that took the push
    await eventually(lambda: len(outcomes) == 2)
    assert sorted((o.outcome, o.device) for o in outcomes) == [
        ("acked", "laptop"),
        ("acked", "phone"),
    ]


async def test_the_same_device_replaces_itself_and_the_cap_counts_every_node(
    cluster: Cluster,
) -> None:
    a, b = await node(cluster, max_connections_per_user=2), await node(
        cluster, max_connections_per_user=2
    )
    phone = await cluster.client(ws_url(a), "bob", device="phone")
    laptop = await cluster.client(ws_url(b), "bob", device="laptop")
    await eventually(lambda: _connections(a, 2))

    phone2 = await cluster.client(ws_url(b), "bob", device="phone")  # on the other node
    await eventually(lambda: phone.close_code == CloseCode.REPLACED)
    assert laptop.close_code is None
    tablet = await cluster.client(ws_url(a), "bob", device="tablet")  # a third device
    await eventually(lambda: laptop.close_code == CloseCode.REPLACED)  # the oldest, on b
    assert phone2.close_code is None and tablet.close_code is None

    for server in (a, b):
        devices = await server.devices("bob")
        assert [(d.device, d.node_id) for d in devices] == [
            ("phone", b.node_id),
            ("tablet", a.node_id),
        ]
        await eventually(lambda s=server: _connections(s, 2))  # counts follow within ~20 ms
        stats = await server.stats()
        # NATS counts a user once per node with a connection of theirs (docs/cluster.md).
        assert stats.online == (1 if cluster.broker == "redis" else 2)
        newest = await server.presence("bob")
        assert newest is not None and newest.device == "tablet"


async def test_retag_and_kick_reach_devices_on_every_node(cluster: Cluster) -> None:
    a, b = await node(cluster), await node(cluster)
    phone = await cluster.client(ws_url(a), "cat", device="phone", tags=["news"])
    laptop = await cluster.client(ws_url(b), "cat", device="laptop", tags=["news"])
    await eventually(lambda: _connections(a, 2))

    assert await a.retag("cat", add=("vip",), remove=("news",))
    for server in (a, b):
        await eventually(lambda s=server: _tags(s, "cat", {("vip",)}))
    b.push_tags(["vip"], b"v")
    assert (await phone.receive()).data == b"v"
    assert (await laptop.receive()).data == b"v"

    assert await b.kick("cat")
    await eventually(lambda: phone.close_code is not None and laptop.close_code is not None)
    await eventually(lambda: _offline(a, "cat"))


async def test_a_device_moving_to_another_node_takes_its_own_unacked_along(
    cluster: Cluster,
) -> None:
    a, b = await node(cluster, ack_interval=0.3), await node(cluster, ack_interval=0.3)
    phone = await cluster.client(ws_url(a), "dan", device="phone")
    laptop = await cluster.client(ws_url(a), "dan", device="laptop")
    await eventually(lambda: _connections(b, 2))
    result = await b.push("dan", b"m", ack=True)
    assert (await phone.receive()).sid == result.sid
    assert (await laptop.receive()).sid == result.sid

    phone2 = await cluster.client(ws_url(b), "dan", device="phone")  # the phone moves
    await eventually(lambda: phone.close_code == CloseCode.REPLACED)
    moved = await phone2.receive()  # handed over by node a, re-sent by node b
    assert (moved.sid, moved.data) == (result.sid, b"m")
    await phone2.ack(result.sid)
    assert (await laptop.receive()).sid == result.sid  # still unacked on node a
    await laptop.ack(result.sid)
    outcomes = cluster.hooks[b].outcomes
    await eventually(lambda: len(outcomes) == 2)
    assert sorted((o.outcome, o.device) for o in outcomes) == [
        ("acked", "laptop"),
        ("acked", "phone"),
    ]
    with pytest.raises(TimeoutError):
        await phone2.receive(timeout=0.6)  # acked: not re-sent


async def test_a_device_that_leaves_leaves_the_others_online(cluster: Cluster) -> None:
    a, b = await node(cluster), await node(cluster)
    phone = await cluster.client(ws_url(a), "eve", device="phone")
    await cluster.client(ws_url(b), "eve", device="laptop")
    await eventually(lambda: _connections(a, 2))
    await phone.close()
    await eventually(lambda: _connections(a, 1))
    for server in (a, b):
        devices = await server.devices("eve")
        assert [d.device for d in devices] == ["laptop"]
        assert (await server.stats()).online == 1
    result = await a.push("eve", b"still here")
    assert result.missing == ()


async def _connections(server: Server, n: int) -> bool:
    return (await server.stats()).online_connections == n


async def _tags(server: Server, user: str, want: set[tuple[str, ...]]) -> bool:
    return {d.tags for d in await server.devices(user)} == want


async def _offline(server: Server, user: str) -> bool:
    return await server.presence(user) is None


async def test_a_device_gets_its_unacked_back_after_its_node_is_killed(cluster: Cluster) -> None:
    a, b = await node(cluster), await node(cluster)
    doomed = await cluster.process("--max-connections-per-user", str(DEVICES))
    phone = await cluster.client(doomed.ws_url, "fay", device="phone")
    await eventually(lambda: _connections(a, 1))
    sids = [(await a.push("fay", f"m{i}".encode(), ack=True)).sid for i in range(2)]
    assert [(await phone.receive()).sid for _ in range(2)] == sids  # sent, not acked
    doomed.kill()
    await phone.close()
    again = await cluster.client(ws_url(b), "fay", device="phone")
    got = [await again.receive() for _ in range(2)]
    assert [(m.sid, m.data) for m in got] == [(s, f"m{i}".encode()) for i, s in enumerate(sids)]
    for m in got:
        await again.ack(m.sid)
    await eventually(lambda: sorted(o.sid for o in cluster.hooks[a].outcomes) == sorted(sids))
    assert {(o.outcome, o.device) for o in cluster.hooks[a].outcomes} == {("acked", "phone")}
    with pytest.raises(TimeoutError):
        await again.receive(timeout=0.5)  # exactly once per sid after the ack
