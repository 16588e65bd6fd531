"""Streaming methods: PushStream (gRPC bidi stream / HTTP NDJSON body) and
AckEvents (gRPC server stream / HTTP server-sent events)."""

from __future__ import annotations

import asyncio
import base64

import grpc
import orjson
import pytest

from im_core.ack import AckOutcome
from im_plugins.http import api as api_module
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

from .api_clients import http_base, to_dict
from .conftest import eventually
from .test_api import nothing, online

STREAM = [
    {"users": ["alice"], "data": b"1"},
    {"users": ["alice", "ghost"], "data": b"2"},
    {"tags": ["red"], "data": b"3"},
    {"all": True, "data": b"4", "ack": True},
    {"data": b"5"},  # no target
    {"users": ["alice"]},  # no data
    {"tags": ["red", "blue"], "match": "all", "data": b"6"},
]


async def _grpc_push_stream(server, channel) -> list[dict]:
    stub = im_v1_pb2_grpc.ImStub(channel(server))

    pushes = []
    for fields in STREAM:
        fields = dict(fields)
        if "match" in fields:
            fields["match"] = pb.MATCH_ALL
        pushes.append(pb.StreamPush(**fields))

    async def requests():  # seq counts across batches
        yield pb.PushBatch(pushes=pushes[:2])
        yield pb.PushBatch()
        yield pb.PushBatch(pushes=pushes[2:])

    return [to_dict(r) async for r in stub.PushStream(requests())]


async def _http_push_stream(server, session) -> list[dict]:
    lines = []
    for fields in STREAM:
        fields = dict(fields)
        if "data" in fields:
            fields["data_b64"] = base64.b64encode(fields.pop("data")).decode()
        lines.append(orjson.dumps(fields))
    lines.insert(3, b"")  # blank lines are skipped
    body = b"\n".join(lines) + b"\n"
    async with session.post(http_base(server) + "/api/v1/push_stream", data=body) as r:
        assert r.status == 200
        reply = await r.json()
    assert reply["processed"] == len(STREAM)
    return reply["results"]


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_push_stream_answers_only_requests_with_news(
    server, connect, channel, session, transport
) -> None:
    alice = await connect(server, "alice", tags=["red", "blue"])
    bob = await connect(server, "bob", tags=["red"])
    await online(server, alice, bob)
    if transport == "grpc":
        results = await _grpc_push_stream(server, channel)
    else:
        results = await _http_push_stream(server, session)
    by_seq = {r["seq"]: r for r in results}
    assert sorted(by_seq) == [1, 3, 4, 5]
    assert by_seq[1]["missing"] == ["ghost"]
    assert by_seq[3]["sid"] != 0
    assert by_seq[4]["error"]["code"] == "invalid_argument"
    assert "users, tags or all" in by_seq[4]["error"]["message"]
    assert by_seq[5]["error"]["code"] == "invalid_argument"
    assert "data" in by_seq[5]["error"]["message"]
    assert [(await alice.receive()).data for _ in range(5)] == [b"1", b"2", b"3", b"4", b"6"]
    got = [await bob.receive() for _ in range(2)]
    assert [m.data for m in got] == [b"3", b"4"] and got[1].sid == by_seq[3]["sid"]
    assert await nothing(alice) and await nothing(bob)


async def test_http_push_stream_bad_line_is_reported_and_the_rest_delivered(
    server, connect, session
) -> None:
    alice = await connect(server, "alice")
    await online(server, alice)
    body = b'{"users": ["alice"], "text": "a"}\n{oops\n{"users": ["alice"], "text": "b"}'
    async with session.post(http_base(server) + "/api/v1/push_stream", data=body) as r:
        reply = await r.json()
    assert reply["processed"] == 3
    [error] = reply["results"]
    assert error["seq"] == 1 and "line 2: malformed JSON" in error["error"]["message"]
    assert [(await alice.receive()).data for _ in range(2)] == [b"a", b"b"]


# --- ack events ---------------------------------------------------------------------


async def next_event(stream) -> tuple[str, dict]:
    """The next server-sent event (name, data), skipping comments."""
    name, data = "", None
    while True:
        line = (await stream.content.readline()).decode()
        assert line, "stream ended"
        if line.startswith("event: "):
            name = line[7:].strip()
        elif line.startswith("data: "):
            data = orjson.loads(line[6:])
        elif line == "\n" and data is not None:
            return name, data


async def test_grpc_ack_events_acked_and_expired(make_server, connect, channel) -> None:
    server = await make_server(ack_interval=0.05, ack_max_tries=1)
    alice = await connect(server, "alice")
    await online(server, alice)
    stub = im_v1_pb2_grpc.ImStub(channel(server))
    events = stub.AckEvents(pb.AckEventsRequest())
    await events.initial_metadata()  # subscribed
    acked = await stub.PushUser(pb.PushUserRequest(user="alice", data=b"a", ack=True))
    msg = await alice.receive()
    await alice.ack(msg.sid)
    expired = await stub.PushUser(pb.PushUserRequest(user="alice", data=b"b", ack=True))
    assert (await alice.receive()).sid == expired.sid  # received, never acked
    first, second = await events.read(), await events.read()
    assert (first.outcome, first.user, first.sid) == (pb.ACKED, "alice", acked.sid)
    assert (second.outcome, second.sid, second.data) == (pb.EXPIRED, expired.sid, b"b")
    assert (second.reason, second.tries) == ("max_tries", 1)
    events.cancel()
    await eventually(lambda: not server.outcomes.subscribers)


async def test_http_ack_events_are_server_sent_events(
    make_server, connect, session, monkeypatch
) -> None:
    monkeypatch.setattr(api_module, "SSE_KEEPALIVE", 0.05)  # finds the closed stream soon
    server = await make_server(ack_interval=0.05, ack_max_tries=1)
    alice = await connect(server, "alice")
    await online(server, alice)
    base = http_base(server) + "/api/v1"
    async with session.get(base + "/ack_events") as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert await stream.content.readline() == b": subscribed\n"
        await stream.content.readline()
        async with session.post(
            base + "/push_user", json={"user": "alice", "text": "a", "ack": True}
        ) as r:
            sid_a = (await r.json())["sid"]
        await alice.ack((await alice.receive()).sid)
        async with session.post(
            base + "/push_user", json={"user": "alice", "text": "b", "ack": True}
        ) as r:
            sid_b = (await r.json())["sid"]
        events = [await next_event(stream), await next_event(stream)]
    assert events[0] == ("acked", {**events[0][1], "sid": sid_a, "user": "alice"})
    assert events[1][0] == "expired"
    assert events[1][1]["sid"] == sid_b and events[1][1]["reason"] == "max_tries"
    assert base64.b64decode(events[1][1]["data_b64"]) == b"b"
    await eventually(lambda: not server.outcomes.subscribers)


async def test_ack_event_streams_end_on_shutdown(make_server, channel, session) -> None:
    server = await make_server()
    stub = im_v1_pb2_grpc.ImStub(channel(server))
    events = stub.AckEvents(pb.AckEventsRequest())
    await events.initial_metadata()
    sse = await session.get(http_base(server) + "/api/v1/ack_events")
    assert await sse.content.readline() == b": subscribed\n"
    await asyncio.wait_for(server.stop(), 10)
    assert [e async for e in events] == []
    assert await events.code() == grpc.StatusCode.OK
    assert await asyncio.wait_for(sse.content.read(), 5) == b"\n"
    sse.close()


async def test_slow_subscriber_is_told_it_fell_behind(server, channel) -> None:
    server.outcomes.limit = 3
    stub = im_v1_pb2_grpc.ImStub(channel(server))
    events = stub.AckEvents(pb.AckEventsRequest())
    await events.initial_metadata()
    for sid in range(1, 10):  # nobody reads while these arrive
        server.outcomes.publish(AckOutcome("acked", "alice", sid))
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for event in events:
            got.append(event.sid)
    assert got == [1, 2, 3]
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "subscribe again" in err.value.details()


@pytest.mark.parametrize("names", [(), ("no:ack_events",)], ids=["defaults", "no-ack_events"])
async def test_ack_streams_are_a_core_service(
    make_server, connect, channel, session, names
) -> None:
    """Outcomes stream and streams end at shutdown with any plugin list: the feed is
    the server's, not a plugin's (``no:ack_events`` was once a silent, dead stream)."""
    server = await make_server(names=names)
    alice = await connect(server, "alice")
    await online(server, alice)
    stub = im_v1_pb2_grpc.ImStub(channel(server))
    events = stub.AckEvents(pb.AckEventsRequest())
    await events.initial_metadata()
    sse = await session.get(http_base(server) + "/api/v1/ack_events")
    assert await sse.content.readline() == b": subscribed\n"
    await sse.content.readline()
    sid = await server.push_one("alice", b"a", ack=True)
    await alice.ack((await alice.receive()).sid)
    got = await asyncio.wait_for(events.read(), 5)
    assert (got.outcome, got.sid) == (pb.ACKED, sid)
    name, data = await asyncio.wait_for(next_event(sse), 5)
    assert (name, data["sid"]) == ("acked", sid)
    started = asyncio.get_running_loop().time()
    await server.stop()
    assert asyncio.get_running_loop().time() - started < 1.0
    assert await events.code() == grpc.StatusCode.OK
    sse.close()
