"""Several devices per user (--max-connections-per-user): a push reaches every
device, each with its own ack state; the same device replaces itself, the cap
replaces the oldest; counts and presence tell users from connections."""

from __future__ import annotations

import pytest

from im_client import Client
from im_core import Identity, hookimpl
from im_core.errors import CloseCode

from .conftest import eventually, ws_url
from .test_acks import AckLog


async def test_a_push_reaches_every_device_each_with_its_own_acks(make_server, api) -> None:
    log = AckLog()
    server = await make_server(plugins=(log,), max_connections_per_user=3, ack_interval=0.2)
    phone = Client(ws_url(server), "ann", device="phone")
    laptop = Client(ws_url(server), "ann", device="laptop")
    await phone.connect()
    await laptop.connect()
    try:
        await eventually(lambda: server.buckets.connections == 2)
        reply = await api(server).call("PushUser", user="ann", data=b"hi", ack=True)
        got = [await phone.receive(), await laptop.receive()]
        assert {(m.sid, m.data) for m in got} == {(reply["sid"], b"hi")}
        await phone.ack(reply["sid"])
        await eventually(lambda: log.acked)
        again = await laptop.receive()  # the laptop has not acked: re-sent to it alone
        assert again.sid == reply["sid"]
        with pytest.raises(TimeoutError):
            await phone.receive(timeout=0.4)
        await laptop.ack(reply["sid"])
        await eventually(lambda: len(log.acked) == 2)
        assert sorted(log.acked) == [("ann", reply["sid"])] * 2
    finally:
        await phone.close()
        await laptop.close()


async def test_same_device_replaces_itself_and_the_cap_replaces_the_oldest(make_server) -> None:
    server = await make_server(max_connections_per_user=2)
    phone = Client(ws_url(server), "bob", device="phone")
    laptop = Client(ws_url(server), "bob", device="laptop")
    await phone.connect()
    await laptop.connect()
    phone2 = Client(ws_url(server), "bob", device="phone")
    await phone2.connect()
    await eventually(lambda: phone.close_code == CloseCode.REPLACED)
    assert laptop.close_code is None
    tablet = Client(ws_url(server), "bob", device="tablet")
    await tablet.connect()  # a third device: the oldest (the laptop) goes
    await eventually(lambda: laptop.close_code == CloseCode.REPLACED)
    assert phone2.close_code is None and tablet.close_code is None
    stats = await server.stats()
    assert (stats.online, stats.connections, stats.online_connections) == (1, 2, 2)
    devices = await server.devices("bob")
    assert [d.device for d in devices] == ["phone", "tablet"]
    for c in (phone, laptop, phone2, tablet):
        await c.close()


async def test_presence_lists_devices_over_the_api(make_server, api, connect) -> None:
    server = await make_server(max_connections_per_user=2)
    await connect(server, "cat", device="phone", tags=["a"])
    await connect(server, "cat", device="laptop", tags=["b"])
    await eventually(lambda: server.buckets.connections == 2)
    reply = await api(server).call("Presence", user="cat")
    assert reply["online"] is True
    assert [(d["device"], d["tags"]) for d in reply["devices"]] == [
        ("phone", ["a"]),
        ("laptop", ["b"]),
    ]
    assert reply["conn_id"] == reply["devices"][1]["conn_id"]  # the newest
    stats = await api(server).call("Stats")
    assert (stats["online"], stats["connections"], stats["online_connections"]) == (1, 2, 2)


async def test_a_device_gets_its_own_unacked_after_a_reconnect(make_server) -> None:
    server = await make_server(max_connections_per_user=2, ack_interval=5)
    phone = Client(ws_url(server), "dan", device="phone")
    laptop = Client(ws_url(server), "dan", device="laptop")
    await phone.connect()
    await laptop.connect()
    try:
        await eventually(lambda: server.buckets.connections == 2)
        sid = (await server.push("dan", b"x", ack=True)).sid
        await phone.receive()
        assert (await laptop.receive()).sid == sid
        await laptop.ack(sid)
        await eventually(lambda: not server.acks.tracks("dan", sid, "laptop"))
        await phone.close()
        phone = Client(ws_url(server), "dan", device="phone")
        await phone.connect()
        assert (await phone.receive()).sid == sid  # its own unacked, redelivered
        with pytest.raises(TimeoutError):
            await laptop.receive(timeout=0.3)
    finally:
        await phone.close()
        await laptop.close()


class DeviceFromToken:
    """A validate plugin that names the device: token "user/device"."""

    @hookimpl(tryfirst=True)
    def im_validate(self, request):
        user, _, device = request.token.partition("/")
        return Identity(user, device=device)


async def test_the_validate_hook_may_name_the_device(make_server) -> None:
    server = await make_server(plugins=(DeviceFromToken(),), max_connections_per_user=2)
    a = Client(ws_url(server), "eve/phone")
    b = Client(ws_url(server), "eve/phone", params={"device": "ignored"})
    await a.connect()
    await b.connect()
    await eventually(lambda: a.close_code == CloseCode.REPLACED)  # the hook's device wins
    assert [d.device for d in await server.devices("eve")] == ["phone"]
    await b.close()


async def test_one_connection_per_user_ignores_devices(make_server) -> None:
    server = await make_server()
    a = Client(ws_url(server), "fay", device="phone")
    b = Client(ws_url(server), "fay", device="laptop")
    await a.connect()
    await b.connect()
    await eventually(lambda: a.close_code == CloseCode.REPLACED)
    assert [d.device for d in await server.devices("fay")] == [""]
    await b.close()


async def test_tag_pushes_retag_and_kick_reach_every_device(make_server, api) -> None:
    server = await make_server(max_connections_per_user=2)
    phone = Client(ws_url(server), "gus", device="phone", tags=["news"])
    laptop = Client(ws_url(server), "gus", device="laptop", tags=["news"])
    await phone.connect()
    await laptop.connect()
    await eventually(lambda: server.buckets.connections == 2)
    await api(server).call("PushTags", tags=["news"], data=b"n")
    assert (await phone.receive()).data == b"n" and (await laptop.receive()).data == b"n"
    await api(server).call("Retag", user="gus", add=["sport"], remove=["news"])
    await api(server).call("PushTags", tags=["sport"], data=b"s")
    assert (await phone.receive()).data == b"s" and (await laptop.receive()).data == b"s"
    await api(server).call("Kick", user="gus")
    await eventually(lambda: phone.close_code == laptop.close_code == CloseCode.KICKED)
