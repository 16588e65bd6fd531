"""The gRPC listener: wire compatibility with the original's interface (a backend
generated from tests/original/basic.proto, in its own process), health checking,
reflection, and how a stopping server answers."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from im_plugins.grpc.transport import GrpcTransport
from im_plugins.pb import basic_pb2, basic_pb2_grpc

from .api_clients import grpc_target, run_original_backend
from .test_api import GatedPlugin, nothing, online


async def test_original_backend_works_unchanged(server, connect, original_stubs) -> None:
    alice = await connect(server, "alice", tags=["v1"])
    bob = await connect(server, "bob", tags=["v2"])
    carol = await connect(server, "carol")
    await online(server, alice, bob, carol)
    before = int(time.time())
    r = await run_original_backend(original_stubs, grpc_target(server))
    assert all(r[c]["ok"] for c in r if c != "SendMessage:offline"), r
    assert r["Onliens"]["reply"] == {"number": 3}
    assert r["SendMessage:offline"]["code"] == "NOT_FOUND"
    assert "ghost" in r["SendMessage:offline"]["details"]
    assert r["SendMessageToMultiple"]["trailing"] == [
        ["im-missing-bin", "ghost"],
        ["im-missing-count", "1"],
        ["im-missing-truncated", "false"],
    ]
    assert r["Broadcast"]["reply"]["size"] >= 1  # the broadcast queue length
    assert r["WTIBroadcast"]["reply"]["size"] >= 2
    dist = r["WTIDistribute"]["reply"]
    assert {tag: d["number"] for tag, d in dist.items()} == {"v1": 1, "v2": 1}
    assert all(d["tag"] == tag and d["createTime"] >= before - 1 for tag, d in dist.items())
    got = {
        "alice": [(await alice.receive()).data for _ in range(4)],
        "bob": [(await bob.receive()).data for _ in range(3)],
        "carol": [(await carol.receive()).data],
    }
    assert got == {
        "alice": [b"to alice", b"to many", b"to all", b"v1 content"],
        "bob": [b"to many", b"to all", b"v2 content"],
        "carol": [b"to all"],
    }
    assert await nothing(alice) and await nothing(bob) and await nothing(carol)


async def test_basic_errors(make_server, channel, connect) -> None:
    server = await make_server(max_message_size=16)
    alice = await connect(server, "alice")
    await online(server, alice)
    stub = basic_pb2_grpc.BasicStub(channel(server))
    cases = [
        (stub.SendMessage, basic_pb2.SendMessageReq(data=b"x"), "INVALID_ARGUMENT", "token"),
        (
            stub.SendMessage,
            basic_pb2.SendMessageReq(token="alice", data=b"x" * 17),
            "INVALID_ARGUMENT",
            "max_message_size",
        ),
        (stub.WTIBroadcast, basic_pb2.BroadcastByWTIReq(), "INVALID_ARGUMENT", "data"),
    ]
    for method, request, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(request)
        assert err.value.code().name == code and text in err.value.details()
    assert await nothing(alice)


async def test_health_and_reflection(server, channel) -> None:
    ch = channel(server)
    health = health_pb2_grpc.HealthStub(ch)
    for service in ("", "im.basic.Basic", "im.v1.Im"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for reply in stub.ServerReflectionInfo(iter([request])):
        names = {s.name for s in reply.list_services_response.service}
    assert {"im.basic.Basic", "im.v1.Im", "grpc.health.v1.Health"} <= names


async def test_a_stopped_server_refuses_new_calls(make_server) -> None:
    server = await make_server()
    target = grpc_target(server)
    await server.stop()
    async with grpc.aio.insecure_channel(target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await basic_pb2_grpc.BasicStub(ch).Ping(basic_pb2.Empty(), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_rpc_port_taken_is_an_error(server) -> None:
    port = next(t.port for t in server.transports if t.name == "grpc")
    second = GrpcTransport("127.0.0.1", port)
    with pytest.raises(OSError, match=r"grpc: cannot listen on 127\.0\.0\.1"):
        await second.start(server)
    await second.close()


async def test_basic_busy_and_unavailable(make_server, channel, connect) -> None:
    plugin = GatedPlugin()
    server = await make_server(
        plugins=(plugin,), broker="gated", broadcast_buffer=5, broadcast_workers=1
    )
    alice = await connect(server, "alice")
    await online(server, alice)
    stub = basic_pb2_grpc.BasicStub(channel(server))
    plugin.broker.gate.clear()  # the worker hangs on the first broadcast
    sizes = [(await stub.Broadcast(basic_pb2.BroadcastReq(data=b"%d" % i))).size for i in range(5)]
    assert sizes[1:] == [1, 2, 3, 4]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Broadcast(basic_pb2.BroadcastReq(data=b"no"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("im-queue-length", "4") in tuple(err.value.trailing_metadata())
    plugin.broker.gate.set()
    assert [(await alice.receive()).data for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]
    plugin.broker.down = True
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SendMessage(basic_pb2.SendMessageReq(token="alice", data=b"x"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await nothing(alice)
