"""The push API, method by method and error by error, over gRPC (im.v1.Im) and
HTTP (/api/v1) alike: every test runs once per transport (the ``api`` fixture)
and asserts what the WebSocket clients receive."""

from __future__ import annotations

import asyncio

import pytest

from im_client import Client
from im_core import CloseCode, Server, hookimpl
from im_core.errors import Unavailable
from im_plugins.memory_broker import MemoryBroker

from .api_clients import ApiError
from .conftest import eventually


async def nothing(client: Client, wait: float = 0.15) -> bool:
    """True if ``client`` receives nothing within ``wait`` seconds."""
    try:
        await client.receive(timeout=wait)
    except TimeoutError:
        return True
    return False


async def online(server: Server, *clients: Client, n: int | None = None) -> None:
    await eventually(lambda: server.local.local_count() == (len(clients) if n is None else n))


class GatedBroker(MemoryBroker):
    """A memory broker whose publish waits for ``gate``, or fails when ``down``."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.down = False
        self.broken = False

    async def publish(self, push):
        if self.broken:
            raise RuntimeError("a bug in a broker plugin")
        if self.down:
            raise Unavailable("broker: connection refused")
        await self.gate.wait()
        return await super().publish(push)

    async def presence(self, user_id):
        if self.down:
            raise Unavailable("broker: connection refused")
        return await super().presence(user_id)

    async def online_count(self):
        await self.gate.wait()
        return await super().online_count()


class GatedPlugin:
    def __init__(self) -> None:
        self.broker = GatedBroker()

    @hookimpl
    def im_broker(self, server):
        return self.broker if server.options.broker == "gated" else None


# --- methods ------------------------------------------------------------------------


async def test_ping(server, api) -> None:
    assert (await api(server).call("Ping")) == {"node_id": server.node_id}


async def test_push_user(server, api, connect) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    await online(server, alice, bob)
    reply = await api(server).call("PushUser", user="alice", data=b"\x00hello")
    assert reply == {"sid": 0, "missing": [], "stored": []}
    msg = await alice.receive()
    assert (msg.sid, msg.data) == (0, b"\x00hello")
    assert await nothing(bob)


async def test_push_user_with_ack_returns_the_sid_the_client_sees(server, api, connect) -> None:
    alice = await connect(server, "alice")
    await online(server, alice)
    reply = await api(server).call("PushUser", user="alice", data=b"x", ack=True)
    msg = await alice.receive()
    assert reply["sid"] != 0 and msg.sid == reply["sid"]


async def test_push_users_reports_who_was_not_reached(server, api, connect) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    await online(server, alice, bob)
    reply = await api(server).call("PushUsers", users=["alice", "ghost", "bob"], data=b"hi")
    assert reply["missing"] == ["ghost"]
    assert (await alice.receive()).data == b"hi"
    assert (await bob.receive()).data == b"hi"


async def test_push_tags_any_and_all(server, api, connect) -> None:
    a = await connect(server, "a", tags=["red"])
    b = await connect(server, "b", tags=["red", "big"])
    c = await connect(server, "c", tags=["blue"])
    await online(server, a, b, c)
    client = api(server)
    reply = await client.call("PushTags", tags=["red", "blue"], data=b"any")
    assert reply["sid"] == 0 and reply["queue_length"] >= 0
    assert [(await x.receive()).data for x in (a, b, c)] == [b"any"] * 3
    await client.call("PushTags", tags=["red", "big"], match="all", data=b"all", ack=True)
    msg = await b.receive()
    assert msg.data == b"all" and msg.sid != 0
    assert await nothing(a) and await nothing(c)


async def test_push_by_tag_gives_each_tag_its_own_content(server, api, connect) -> None:
    v1, v2 = await connect(server, "a", tags=["v1"]), await connect(server, "b", tags=["v2"])
    await online(server, v1, v2)
    reply = await api(server).call("PushByTag", contents={"v1": b"old", "v2": b"new"})
    assert reply["queue_length"] >= 0
    assert (await v1.receive()).data == b"old"
    assert (await v2.receive()).data == b"new"


async def test_broadcast(server, api, connect) -> None:
    clients = [await connect(server, f"u{i}") for i in range(3)]
    await online(server, *clients)
    reply = await api(server).call("Broadcast", data=b"all")
    assert reply["sid"] == 0 and reply["queue_length"] >= 0
    assert [(await c.receive()).data for c in clients] == [b"all"] * 3


async def test_kick_closes_with_4502(server, api, connect) -> None:
    alice = await connect(server, "alice")
    await online(server, alice)
    assert (await api(server).call("Kick", user="alice", reason="bye")) == {}
    assert await alice.wait_closed() == CloseCode.KICKED
    await online(server, n=0)


async def test_presence(server, api, connect) -> None:
    alice = await connect(server, "alice", tags=["v1"])
    await online(server, alice)
    client = api(server)
    found = await client.call("Presence", user="alice")
    assert found["online"] is True and found["tags"] == ["v1"]
    assert found["node_id"] == server.node_id and found["conn_id"] and found["connected_at"] > 0
    missing = await client.call("Presence", user="ghost")
    assert missing["online"] is False
    assert missing["node_id"] == -1  # not 0: that is a real node's id


async def test_retag_then_push_to_the_new_tag(server, api, connect) -> None:
    alice = await connect(server, "alice", tags=["old"])
    await online(server, alice)
    client = api(server)
    assert (await client.call("Retag", user="alice", add=["new"], remove=["old"])) == {}
    assert (await client.call("Presence", user="alice"))["tags"] == ["new"]
    await client.call("PushTags", tags=["old"], data=b"no")
    await client.call("PushTags", tags=["new"], data=b"yes")
    assert (await alice.receive()).data == b"yes"


async def test_distribution(server, api, connect) -> None:
    clients = [
        await connect(server, "a", tags=["v1"]),
        await connect(server, "b", tags=["v1", "v2"]),
    ]
    await online(server, *clients)
    reply = await api(server).call("Distribution")
    numbers = {t["tag"]: t["number"] for t in reply["tags"]}
    assert numbers == {"v1": 2, "v2": 1}
    assert all(t["created"] > 0 for t in reply["tags"])


async def test_stats(server, api, connect) -> None:
    alice = await connect(server, "alice", tags=["v1"])
    await online(server, alice)
    await api(server).call("PushUser", user="alice", data=b"x", ack=True)
    stats = await api(server).call("Stats")
    assert stats["online"] == 1 and stats["connections"] == 1
    assert stats["unacked"] == 1 and stats["tag_groups"] == 1
    assert stats["queue_capacity"] == server.options.broadcast_buffer


async def test_nodes_of_a_single_node(server, api, connect) -> None:
    alice = await connect(server, "alice")
    await online(server, alice)
    reply = await api(server).call("Nodes")
    assert reply == {"nodes": [{"node_id": server.node_id, "users": 1, "connections": 1}]}


# --- errors -------------------------------------------------------------------------


async def test_offline_user_is_not_found(server, api, connect) -> None:
    bob = await connect(server, "bob")
    await online(server, bob)
    client = api(server)
    for method, fields in [
        ("PushUser", {"user": "ghost", "data": b"x"}),
        ("Kick", {"user": "ghost"}),
        ("Retag", {"user": "ghost", "add": ["t"]}),
    ]:
        with pytest.raises(ApiError) as err:
            await client.call(method, **fields)
        assert (err.value.status, err.value.code) == (404, "not_found")
        assert "ghost" in err.value.message
    assert await nothing(bob)


@pytest.mark.parametrize(
    ("method", "fields", "field"),
    [
        ("PushUser", {"data": b"x"}, "user"),
        ("PushUser", {"user": "alice"}, "data"),
        ("PushUsers", {"data": b"x"}, "users"),
        ("PushTags", {"data": b"x"}, "tags"),
        ("PushByTag", {}, "contents"),
        ("Broadcast", {}, "data"),
        ("Kick", {}, "user"),
        ("Presence", {}, "user"),
        ("Retag", {"user": "alice"}, "add"),
    ],
)
async def test_missing_field_is_invalid_argument_naming_it(
    server, api, connect, method, fields, field
) -> None:
    alice = await connect(server, "alice")
    await online(server, alice)
    with pytest.raises(ApiError) as err:
        await api(server).call(method, **fields)
    assert (err.value.status, err.value.code) == (400, "invalid_argument")
    assert err.value.message.startswith(field) or f"{field}:" in err.value.message
    assert await nothing(alice)


async def test_payload_over_max_message_size(make_server, api, connect) -> None:
    server = await make_server(max_message_size=1024)
    alice = await connect(server, "alice")
    await online(server, alice)
    client = api(server)
    await client.call("PushUser", user="alice", data=b"x" * 1024)  # at the limit: fine
    assert (await alice.receive()).data == b"x" * 1024
    for method, fields in [
        ("PushUser", {"user": "alice"}),
        ("PushUsers", {"users": ["alice"]}),
        ("Broadcast", {}),
        ("PushTags", {"tags": ["t"]}),
    ]:
        with pytest.raises(ApiError) as err:
            await client.call(method, data=b"x" * 1025, **fields)
        if client.name == "http":
            assert (err.value.status, err.value.code) == (413, "payload_too_large")
        else:
            assert err.value.code == "invalid_argument"
        assert "max_message_size" in err.value.message
    assert await nothing(alice)


async def test_busy_broadcast_queue_is_resource_exhausted_with_its_length(
    make_server, api, connect
) -> None:
    plugin = GatedPlugin()
    server = await make_server(
        plugins=(plugin,), broker="gated", broadcast_buffer=5, broadcast_workers=1
    )
    alice = await connect(server, "alice")
    await online(server, alice)
    client = api(server)
    plugin.broker.gate.clear()  # the worker takes one push and hangs on it
    await client.call("Broadcast", data=b"0")
    await eventually(lambda: server.queue_length == 0)
    lengths = [(await client.call("Broadcast", data=b"%d" % i))["queue_length"] for i in (1, 2)]
    lengths += [(await client.call("PushTags", tags=["t"], data=b"x"))["queue_length"]]
    lengths += [(await client.call("Broadcast", data=b"3"))["queue_length"]]
    assert lengths == [1, 2, 3, 4]  # high-water mark: 80 % of 5
    for method, fields in [
        ("Broadcast", {"data": b"no"}),
        ("PushByTag", {"contents": {"t": b"no"}}),
    ]:
        with pytest.raises(ApiError) as err:
            await client.call(method, **fields)
        assert (err.value.status, err.value.code) == (429, "resource_exhausted")
        assert "4/5" in err.value.message
        queue_length = err.value.extra.get("queue_length", err.value.extra.get("im-queue-length"))
        assert int(queue_length) == 4
    plugin.broker.gate.set()
    assert [(await alice.receive()).data for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    assert await nothing(alice)


async def test_broker_down_is_unavailable(make_server, api, connect) -> None:
    plugin = GatedPlugin()
    server = await make_server(plugins=(plugin,), broker="gated")
    alice = await connect(server, "alice")
    await online(server, alice)
    plugin.broker.down = True
    client = api(server)
    for method, fields in [
        ("PushUser", {"user": "alice", "data": b"x"}),
        ("PushUsers", {"users": ["alice"], "data": b"x"}),
        ("Presence", {"user": "alice"}),
    ]:
        with pytest.raises(ApiError) as err:
            await client.call(method, **fields)
        assert (err.value.status, err.value.code) == (503, "unavailable")
    assert await nothing(alice)


async def test_unexpected_error_is_internal_without_details(
    make_server, api, connect, caplog
) -> None:
    plugin = GatedPlugin()
    server = await make_server(plugins=(plugin,), broker="gated")
    alice = await connect(server, "alice")
    await online(server, alice)
    plugin.broker.broken = True
    with pytest.raises(ApiError) as err:
        await api(server).call("PushUser", user="alice", data=b"x")
    assert err.value.status == 500 and err.value.code == "internal"
    assert err.value.message == "internal error"  # no exception text, no traceback
    assert "a bug in a broker plugin" in caplog.text  # but the log has it
    assert (await api(server).call("Ping"))["node_id"] == server.node_id  # still serving


async def test_in_flight_call_finishes_on_shutdown(make_server, api, connect) -> None:
    plugin = GatedPlugin()
    server = await make_server(plugins=(plugin,), broker="gated")
    alice = await connect(server, "alice")
    await online(server, alice)
    client = api(server)
    plugin.broker.gate.clear()
    call = asyncio.ensure_future(client.call("Stats"))
    await asyncio.sleep(0.1)  # the call is waiting in the broker
    stop = asyncio.ensure_future(server.stop())
    await asyncio.sleep(0.1)
    assert not call.done()
    plugin.broker.gate.set()
    assert (await asyncio.wait_for(call, 5))["node_id"] == server.node_id
    await asyncio.wait_for(stop, 10)
    assert await alice.wait_closed() == CloseCode.GOING_AWAY
