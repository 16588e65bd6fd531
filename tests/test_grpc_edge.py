"""What a gRPC caller may send and what it gets past each limit: requests that do
not decode, too many calls at once, SendMessageToMultiple's bounded trailers."""

from __future__ import annotations

import logging

import grpc
import pytest

from im_plugins.grpc.basic import MISSING_BUDGET
from im_plugins.pb import basic_pb2, basic_pb2_grpc, im_v1_pb2, im_v1_pb2_grpc

from .conftest import eventually
from .test_api import nothing, online

GARBAGE = b"\xff\xff\xff"  # a field tag cut short: no message decodes from it


async def test_send_message_to_multiple_bounds_its_trailers(server, connect, channel) -> None:
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    await online(server, alice, bob)
    offline = [f"ghost-{i}-" + "x" * (250 if i % 10 == 0 else 10) for i in range(1000)]
    offline[0] = "g" * server.options.max_user_id_length
    stub = basic_pb2_grpc.BasicStub(channel(server))
    call = stub.SendMessageToMultiple(
        basic_pb2.SendMessageToMultipleReq(token=["alice", *offline, "bob"], data=b"hi")
    )
    await call  # no RESOURCE_EXHAUSTED although 1,000 users are missing
    assert (await alice.receive()).data == b"hi" and (await bob.receive()).data == b"hi"
    trailers = list(await call.trailing_metadata())
    size = sum(len(k) + len(v) + 32 for k, v in trailers)
    assert size <= MISSING_BUDGET + 200 < 8 << 10  # gRPC callers accept 8 KiB by default
    listed = [v.decode() for k, v in trailers if k == "im-missing-bin"]
    assert 0 < len(listed) < 1000 and listed == offline[: len(listed)]
    assert dict((k, v) for k, v in trailers if k != "im-missing-bin") == {
        "im-missing-count": "1000",
        "im-missing-truncated": "true",
    }


@pytest.mark.parametrize(
    ("method", "kind", "type_name"),
    [
        ("/im.basic.Basic/SendMessage", "unary_unary", "im.basic.SendMessageReq"),
        ("/im.basic.Basic/Ping", "unary_unary", "im.basic.Empty"),
        ("/im.v1.Im/PushUser", "unary_unary", "im.v1.PushUserRequest"),
        ("/im.v1.Im/AckEvents", "unary_stream", "im.v1.AckEventsRequest"),
        ("/im.v1.Im/PushStream", "stream_stream", "im.v1.PushBatch"),
    ],
)
async def test_undecodable_request_is_invalid_argument(
    server, connect, channel, caplog, method, kind, type_name
) -> None:
    alice = await connect(server, "alice")
    await online(server, alice)
    ch = channel(server)
    multicallable = getattr(ch, kind)(method)  # no serializers: the bytes go as they are
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if kind == "stream_stream":
            async for _ in multicallable(iter([GARBAGE])):
                pass
        elif kind == "unary_stream":
            async for _ in multicallable(GARBAGE):
                pass
        else:
            await multicallable(GARBAGE)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"request: not a valid {type_name} message"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    stub = im_v1_pb2_grpc.ImStub(ch)
    await stub.PushUser(im_v1_pb2.PushUserRequest(user="alice", data=b"ok"))  # still serving
    assert (await alice.receive()).data == b"ok"
    assert await nothing(alice)


async def test_calls_past_max_concurrent_rpcs_are_resource_exhausted(make_server, channel) -> None:
    server = await make_server(max_concurrent_rpcs=3)
    stub = im_v1_pb2_grpc.ImStub(channel(server))
    streams = [stub.AckEvents(im_v1_pb2.AckEventsRequest()) for _ in range(3)]
    for stream in streams:
        await stream.initial_metadata()  # three calls in progress
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Stats(im_v1_pb2.StatsRequest())
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    streams[0].cancel()

    async def served() -> bool:
        try:
            await stub.Stats(im_v1_pb2.StatsRequest())
        except grpc.aio.AioRpcError:
            return False
        return True

    await eventually(served)
    for stream in streams[1:]:
        stream.cancel()
