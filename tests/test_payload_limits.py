"""The default payload limit follows gRPC's 4 MiB: pushes the original service
delivered (70 KB and 200 KB from its own clients) are delivered by im too."""

from __future__ import annotations

import pytest

from im_core import Server
from im_plugins.pb import basic_pb2, basic_pb2_grpc

from .conftest import eventually


@pytest.mark.parametrize("size", [70_000, 200_000, 3_000_000])
async def test_original_api_delivers_large_payloads(
    server: Server, connect, channel, size: int
) -> None:
    client = await connect(server, "big")
    await eventually(lambda: server.buckets.get("big"))
    payload = bytes(range(256)) * (size // 256)
    stub = basic_pb2_grpc.BasicStub(channel(server))
    await stub.SendMessage(basic_pb2.SendMessageReq(token="big", data=payload))
    msg = await client.receive(timeout=10)
    assert msg.data == payload


async def test_http_push_of_a_large_payload(server: Server, connect, api) -> None:
    client = await connect(server, "big-http")
    await eventually(lambda: server.buckets.get("big-http"))
    payload = b"z" * 200_000
    await api(server).call("PushUser", user="big-http", data=payload)
    assert (await client.receive(timeout=10)).data == payload
