"""``--api-key``: both APIs refuse calls without the key (im.basic included),
health and the OpenAPI document stay open, and the loopback-only key-less
listener serves original backends."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from im_core import Options, Server
from im_core.plugins import get_plugin_manager
from im_plugins.http.api import PREFIX
from im_plugins.pb import basic_pb2, basic_pb2_grpc, im_v1_pb2_grpc
from im_plugins.pb import im_v1_pb2 as pb

from .api_clients import ApiError, http_base, run_original_backend
from .test_api import nothing, online

KEY = "s3cret"


async def test_calls_without_the_key_are_unauthenticated(make_server, api, connect) -> None:
    server = await make_server(api_key=KEY)
    alice = await connect(server, "alice")
    await online(server, alice)
    for client in (api(server), api(server, "wrong")):
        for method, fields in [("PushUser", {"user": "alice", "data": b"x"}), ("Stats", {})]:
            with pytest.raises(ApiError) as err:
                await client.call(method, **fields)
            assert (err.value.status, err.value.code) == (401, "unauthenticated")
            assert "API key" in err.value.message
    assert await nothing(alice)
    assert (await api(server, KEY).call("PushUser", user="alice", data=b"ok"))["sid"] == 0
    assert (await alice.receive()).data == b"ok"


async def test_http_accepts_bearer_and_x_api_key(make_server, session) -> None:
    server = await make_server(api_key=KEY)
    url = http_base(server) + PREFIX
    for headers, status in [
        ({"Authorization": f"Bearer {KEY}"}, 200),
        ({"X-API-Key": KEY}, 200),
        ({"Authorization": KEY}, 401),
        ({}, 401),
    ]:
        async with session.get(url + "/stats", headers=headers) as r:
            assert r.status == status, headers
    async with session.get(url + "/openapi.json") as r:
        assert r.status == 200  # the document is public
    async with session.get(http_base(server) + "/ping") as r:
        assert r.status == 200  # not part of the API


async def test_grpc_streams_health_and_bearer(make_server, channel) -> None:
    server = await make_server(api_key=KEY)
    ch = channel(server)
    stub = im_v1_pb2_grpc.ImStub(ch)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.AckEvents(pb.AckEventsRequest()):
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    results = stub.PushStream(iter([pb.PushBatch(pushes=[pb.StreamPush(all=True, data=b"x")])]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in results:
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = await stub.Ping(pb.PingRequest(), metadata=(("authorization", f"Bearer {KEY}"),))
    assert reply.node_id == server.node_id
    health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_original_backend_needs_the_key_or_the_local_listener(
    make_server,
    connect,
    channel,
    original_stubs,
) -> None:
    server = await make_server(api_key=KEY, plugin={"rpc_local_port": 0})
    alice = await connect(server, "alice")
    await online(server, alice)
    grpc_transport = next(t for t in server.transports if t.name == "grpc")
    refused = await run_original_backend(original_stubs, f"127.0.0.1:{grpc_transport.port}")
    assert {r["code"] for r in refused.values()} == {"UNAUTHENTICATED"}
    assert await nothing(alice)
    with_key = await run_original_backend(original_stubs, f"127.0.0.1:{grpc_transport.port}", KEY)
    assert with_key["SendMessage"]["ok"]
    local = await run_original_backend(original_stubs, f"127.0.0.1:{grpc_transport.local_port}")
    assert local["SendMessage"]["ok"] and local["Onliens"]["reply"] == {"number": 1}
    assert [(await alice.receive()).data for _ in range(6)] == [
        b"to alice",
        b"to many",
        b"to all",
    ] * 2
    # The key-less listener serves im.basic only.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_transport.local_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await im_v1_pb2_grpc.ImStub(ch).Stats(pb.StatsRequest())
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        await basic_pb2_grpc.BasicStub(ch).Ping(basic_pb2.Empty())


@pytest.mark.parametrize(
    ("host", "key", "warned"),
    [("0.0.0.0", None, True), ("0.0.0.0", KEY, False), ("127.0.0.1", None, False)],
)
async def test_open_api_beyond_loopback_is_warned_about(caplog, host, key, warned) -> None:
    caplog.set_level(logging.WARNING)
    options = Options.from_values(host=host, http_port=0, rpc_port=0, api_key=key)
    async with Server(options, get_plugin_manager(autoload=False)):
        pass
    warnings = [r.name for r in caplog.records if "set --api-key" in r.getMessage()]
    assert sorted(warnings) == (["im.grpc", "im.http"] if warned else [])
