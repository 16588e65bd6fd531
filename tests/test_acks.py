"""Ack receipts: sids, receipts, re-sends, expiry, redelivery after reconnect."""

from __future__ import annotations

import pytest

from im_client import Client
from im_core import hookimpl
from im_core.ack import NODE_BITS, SidAllocator, node_of

from .conftest import eventually, ws_url


class AckLog:
    def __init__(self) -> None:
        self.acked: list[tuple[str, int]] = []
        self.expired: list[tuple[str, int, bytes, int, str]] = []

    @hookimpl
    def im_acked(self, user_id: str, sid: int) -> None:
        self.acked.append((user_id, sid))

    @hookimpl
    async def im_ack_expired(self, user_id, sid, payload, tries, reason) -> None:
        self.expired.append((user_id, sid, payload, tries, reason))


@pytest.fixture
async def acking(make_server):
    log = AckLog()
    server = await make_server(plugins=(log,), ack_interval=0.1, ack_max_tries=3, node_id=7)
    return server, log


async def test_receipt_fires_acked_and_stops_resends(acking, connect) -> None:
    server, log = acking
    client = await connect(server, "ann")
    await eventually(lambda: server.local.local_count() == 1)
    result = await server.push("ann", b"important", ack=True)
    assert result.sid > 0 and node_of(result.sid) == 7
    msg = await client.receive()
    assert (msg.sid, msg.data) == (result.sid, b"important")
    await client.ack(msg.sid)
    await eventually(lambda: log.acked == [("ann", result.sid)])
    with pytest.raises(TimeoutError):
        await client.receive(timeout=0.4)  # no re-send after the receipt
    assert log.expired == []


async def test_unacked_message_is_resent_then_expires(acking, connect) -> None:
    server, log = acking
    client = await connect(server, "ben")
    await eventually(lambda: server.local.local_count() == 1)
    result = await server.push("ben", b"again", ack=True)
    got = [await client.receive() for _ in range(3)]
    assert [(m.sid, m.data) for m in got] == [(result.sid, b"again")] * 3
    await eventually(lambda: log.expired)
    assert log.expired == [("ben", result.sid, b"again", 3, "max_tries")]
    with pytest.raises(TimeoutError):
        await client.receive(timeout=0.3)
    assert log.acked == []


async def test_ack_for_someone_elses_sid_is_ignored(acking, connect) -> None:
    server, log = acking
    a = await connect(server, "a")
    b = await connect(server, "b")
    await eventually(lambda: server.local.local_count() == 2)
    result = await server.push("a", b"for a", ack=True)
    await a.receive()
    await b.ack(result.sid)
    await a.ack(result.sid)
    await eventually(lambda: log.acked == [("a", result.sid)])


async def test_unacked_messages_are_redelivered_in_order_after_reconnect(make_server) -> None:
    log = AckLog()
    server = await make_server(plugins=(log,), ack_interval=5, ack_max_tries=3)
    first = Client(ws_url(server), "cat")
    await first.connect()
    await eventually(lambda: server.local.local_count() == 1)
    sids = [(await server.push("cat", f"m{i}".encode(), ack=True)).sid for i in range(3)]
    for _ in range(3):
        await first.receive()
    await first.close()  # gone before acking anything
    await eventually(lambda: server.local.local_count() == 0)
    async with Client(ws_url(server), "cat", auto_ack=True) as second:
        got = [await second.receive() for _ in range(3)]
        assert [(m.sid, m.data) for m in got] == list(zip(sids, [b"m0", b"m1", b"m2"], strict=True))
        await eventually(lambda: sorted(s for _, s in log.acked) == sorted(sids))


async def test_user_who_stays_away_expires_as_offline(make_server) -> None:
    log = AckLog()
    server = await make_server(
        plugins=(log,), ack_interval=0.05, ack_max_tries=5, ack_keep_offline=0.2
    )
    client = Client(ws_url(server), "dee")
    await client.connect()
    await eventually(lambda: server.local.local_count() == 1)
    result = await server.push("dee", b"lost", ack=True)
    await client.receive()
    await client.close()
    await eventually(lambda: log.expired)
    user, sid, payload, _tries, reason = log.expired[0]
    assert (user, sid, payload, reason) == ("dee", result.sid, b"lost", "offline")


def test_sids_are_unique_nonzero_and_js_safe() -> None:
    alloc = SidAllocator(1023)
    sids = [alloc.next() for _ in range(10_000)]
    assert len(set(sids)) == len(sids) and all(0 < s < 2**53 for s in sids)
    assert {node_of(s) for s in sids} == {1023}
    with pytest.raises(ValueError):
        SidAllocator(1 << NODE_BITS)


async def test_max_tries_is_a_hard_limit_across_a_reconnect(make_server) -> None:
    """A reconnect right after the last try sends nothing more: the entry expires
    with ``tries == max_tries`` (a reconnect used to add a try past the limit)."""
    log = AckLog()
    server = await make_server(plugins=(log,), ack_interval=0.4, ack_max_tries=2)
    first = Client(ws_url(server), "eve")
    await first.connect()
    await eventually(lambda: server.local.local_count() == 1)
    sid = (await server.push("eve", b"twice at most", ack=True)).sid
    assert (await first.receive()).sid == sid  # try 1
    assert (await first.receive(timeout=2)).sid == sid  # try 2, the last
    await first.close()
    await eventually(lambda: server.local.local_count() == 0)
    async with Client(ws_url(server), "eve", auto_ack=False) as second:
        with pytest.raises(TimeoutError):
            await second.receive(timeout=0.3)  # no third send on reconnect
        await eventually(lambda: log.expired, timeout=3)
    assert log.expired == [("eve", sid, b"twice at most", 2, "max_tries")]
