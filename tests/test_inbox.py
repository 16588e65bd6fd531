"""The offline inbox on one node: ``store`` pushes to offline users are kept, bounded
and expired, and sent first, in order, when the user connects."""

from __future__ import annotations

import asyncio

import pytest

from im_client import Client

from .api_clients import ApiError
from .conftest import eventually, ws_url
from .test_acks import AckLog


async def test_push_to_offline_user_is_stored_and_delivered_on_connect(make_server, api) -> None:
    log = AckLog()
    server = await make_server(plugins=(log,), ack_interval=5)
    push = api(server)
    one = await push.call("PushUser", user="ann", data=b"m1", store=True)
    assert one["sid"] and one["stored"] == ["ann"]
    many = await push.call("PushUsers", users=["ann", "bob"], data=b"m2", store=True)
    assert many["missing"] == [] and sorted(many["stored"]) == ["ann", "bob"]
    ann = Client(ws_url(server), "ann")
    await ann.connect()
    try:
        got = [await ann.receive() for _ in range(2)]
        assert [(m.sid, m.data) for m in got] == [(one["sid"], b"m1"), (many["sid"], b"m2")]
        for m in got:
            await ann.ack(m.sid)
        want = sorted([("ann", one["sid"]), ("ann", many["sid"])])
        await eventually(lambda: sorted(log.acked) == want)
        with pytest.raises(TimeoutError):
            await ann.receive(timeout=0.3)  # acked: nothing is re-sent
    finally:
        await ann.close()


async def test_without_store_an_offline_user_is_still_not_found(make_server, api) -> None:
    server = await make_server()
    with pytest.raises(ApiError) as err:
        await api(server).call("PushUser", user="nobody", data=b"x")
    assert err.value.status == 404
    reply = await api(server).call("PushUsers", users=["nobody"], data=b"x", store=False)
    assert reply == {"sid": 0, "missing": ["nobody"], "stored": []}


async def test_server_default_stores_unless_the_push_says_no(make_server, api, connect) -> None:
    server = await make_server(store=True)
    kept = await api(server).call("PushUser", user="cat", data=b"kept")
    assert kept["stored"] == ["cat"]
    with pytest.raises(ApiError):
        await api(server).call("PushUser", user="cat", data=b"not kept", store=False)
    cat = await connect(server, "cat")
    assert (await cat.receive()).data == b"kept"
    with pytest.raises(TimeoutError):
        await cat.receive(timeout=0.3)


async def test_inbox_is_bounded_in_messages_and_bytes(make_server, api) -> None:
    server = await make_server(inbox_max_messages=2, inbox_max_bytes=10)
    push = api(server)
    assert (await push.call("PushUsers", users=["dan"], data=b"12345", store=True))["stored"]
    assert (await push.call("PushUsers", users=["dan"], data=b"12345", store=True))["stored"]
    full = await push.call("PushUsers", users=["dan"], data=b"1", store=True)
    assert full["stored"] == [] and full["missing"] == ["dan"]
    big = await push.call("PushUsers", users=["eve"], data=b"12345678901", store=True)
    assert big["missing"] == ["eve"]  # over the bytes bound on its own
    with pytest.raises(ApiError) as err:
        await push.call("PushUser", user="dan", data=b"1", store=True)
    assert err.value.status == 404


async def test_kept_push_expires_as_offline_with_an_outcome(make_server, api, session) -> None:
    log = AckLog()
    server = await make_server(plugins=(log,), inbox_ttl=0.3)
    outcomes = server.outcomes.subscribe()
    reply = await api(server).call("PushUser", user="fay", data=b"too late", store=True)
    await eventually(lambda: log.expired)
    assert log.expired == [("fay", reply["sid"], b"too late", 0, "offline")]
    outcome = await asyncio.wait_for(anext(aiter(outcomes)), 5)
    assert (outcome.outcome, outcome.sid, outcome.reason) == ("expired", reply["sid"], "offline")
    fay = Client(ws_url(server), "fay")
    await fay.connect()
    try:
        with pytest.raises(TimeoutError):
            await fay.receive(timeout=0.3)  # expired: not delivered any more
    finally:
        await fay.close()


async def test_kept_pushes_come_before_anything_newer(make_server) -> None:
    """Pushes made while the connection is being set up wait behind the kept ones."""
    server = await make_server()
    sids = [(await server.push("gus", f"old{i}".encode(), store=True)).sid for i in range(5)]
    gus = Client(ws_url(server), "gus")
    connecting = asyncio.create_task(gus.connect())
    newer: list[int] = []
    while not connecting.done():  # push as soon as the user is registered, and on
        if server.buckets.get("gus") is not None:
            newer.append((await server.push("gus", b"new", ack=True)).sid)
        await asyncio.sleep(0)
    await connecting
    newer.append((await server.push("gus", b"new", ack=True)).sid)
    try:
        got = [await gus.receive() for _ in range(5 + len(newer))]
        assert [m.sid for m in got] == sids + newer
        assert [m.data for m in got[:5]] == [f"old{i}".encode() for i in range(5)]
    finally:
        await gus.close()


async def test_a_kept_push_is_a_hard_limited_ack_entry(make_server) -> None:
    """Once sent, a kept push is re-sent like any acked push and expires after its tries."""
    log = AckLog()
    server = await make_server(plugins=(log,), ack_interval=0.1, ack_max_tries=2)
    sid = (await server.push("hal", b"x", store=True)).sid
    hal = Client(ws_url(server), "hal")
    await hal.connect()
    try:
        got = [await hal.receive() for _ in range(2)]
        assert [m.sid for m in got] == [sid, sid]
        await eventually(lambda: log.expired)
        assert log.expired == [("hal", sid, b"x", 2, "max_tries")]
    finally:
        await hal.close()


async def test_a_stored_tag_push_reaches_members_who_were_away(make_server, api) -> None:
    """The rule: a member last seen before the push who connects with matching tags
    within --inbox-ttl gets it first; one online at the time, or never seen, does not."""
    server = await make_server()
    away = Client(ws_url(server), "ivy", tags=["news"])
    await away.connect()
    await away.close()  # seen, then away
    await eventually(lambda: server.local.local_count() == 0)
    here = Client(ws_url(server), "jon", tags=["news"])
    await here.connect()
    try:
        await eventually(lambda: server.local.local_count() == 1)
        push = api(server)
        kept = await push.call("PushTags", tags=["news"], data=b"extra", store=True)
        assert kept["sid"]
        plain = await push.call("PushTags", tags=["news"], data=b"not kept")
        assert (await here.receive()).sid == kept["sid"]
        await here.ack(kept["sid"])
        await here.receive()
        await eventually(lambda: not server.acks.pending("jon"))
        await here.close()  # left after the push: it had it
        again = Client(ws_url(server), "jon", tags=["news"])
        ivy = Client(ws_url(server), "ivy", tags=["news", "sport"])
        new = Client(ws_url(server), "kim", tags=["news"])
        for c in (again, ivy, new):
            await c.connect()
        got = await ivy.receive()
        assert (got.sid, got.data) == (kept["sid"], b"extra")
        await ivy.ack(got.sid)
        for c in (again, new, ivy):
            with pytest.raises(TimeoutError):
                await c.receive(timeout=0.3)
        assert plain["sid"] == 0
        for c in (again, ivy, new):
            await c.close()
    finally:
        await here.close()


async def test_a_stored_tag_push_matches_all_tags_when_asked(make_server) -> None:
    server = await make_server()
    for user in ("lea", "max"):
        c = Client(ws_url(server), user, tags=["a"])
        await c.connect()
        await c.close()
    await eventually(lambda: server.local.local_count() == 0)
    sid = server.push_tags(["a", "b"], b"both", match="all", store=True).sid
    await eventually(lambda: server.queue_length == 0)
    lea = Client(ws_url(server), "lea", tags=["a", "b"])
    max_ = Client(ws_url(server), "max", tags=["a"])
    await lea.connect()
    await max_.connect()
    try:
        assert (await lea.receive()).sid == sid
        with pytest.raises(TimeoutError):
            await max_.receive(timeout=0.3)
    finally:
        await lea.close()
        await max_.close()
