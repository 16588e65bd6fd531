"""Connecting: validation before the upgrade, codecs, frame types, hooks, /ping."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from im_client import Client, ConnectError
from im_core import CloseCode, ConnectRequest, Identity, Reject, Server, hookimpl
from im_plugins.protobuf_codec import ProtobufCodec

from .conftest import eventually, http_url, ws_url


async def test_ping_answers_json(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(http_url(server, "/ping")) as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["status"] == 200 and body["data"] == "pong"


@pytest.mark.parametrize("query", ["", "?token="])
async def test_missing_token_is_refused_before_upgrade(server: Server, query: str) -> None:
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    async with aiohttp.ClientSession() as http:
        async with http.get(ws_url(server) + query, headers=upgrade) as resp:
            assert resp.status == 400
            body = await resp.json()
    assert "token" in body["error"]["message"]
    assert server.local.local_count() == 0


async def test_websocket_client_gets_clear_refusal(server: Server) -> None:
    with pytest.raises(ConnectError) as info:
        await Client(ws_url(server), "").connect()
    assert info.value.status == 400


async def test_plain_get_without_upgrade_is_400(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(ws_url(server), params={"token": "u"}) as resp:
            assert resp.status == 400
            assert "WebSocket" in (await resp.json())["error"]["message"]


async def test_rejecting_plugin_gives_401_and_failed_hook(make_server, connect) -> None:
    failed: list[str] = []

    class Auth:
        @hookimpl
        async def im_validate(self, request: ConnectRequest):
            await asyncio.sleep(0)  # async validate is awaited
            if request.token == "good":
                return Identity("alice", tags=("vip",), meta={"plan": "pro"})
            return Reject("bad token")

        @hookimpl
        def im_validate_failed(self, reject: Reject) -> None:
            failed.append(reject.reason)

    server = await make_server(plugins=(Auth(),))
    async with aiohttp.ClientSession() as http:
        async with http.get(ws_url(server), params={"token": "nope"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["message"] == "bad token"
    assert failed == ["bad token"]
    await connect(server, "good")
    await eventually(lambda: server.local.local_count() == 1)
    conn = server.buckets.get("alice")
    assert conn is not None and conn.tags == {"vip"} and conn.meta == {"plan": "pro"}


async def test_unknown_codec_and_bad_message_type_are_400(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        for params, field in (
            ({"token": "u", "codec": "xml"}, "codec"),
            ({"token": "u", "message_type": "morse"}, "message_type"),
            ({"token": "u", "codec": "protobuf", "message_type": "text"}, "message_type"),
        ):
            async with http.get(ws_url(server), params=params) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["message"].startswith(field)


async def test_chat_alias_and_tags_from_query(server: Server) -> None:
    url = ws_url(server).replace("/conn", "/chat")
    async with Client(url, "bob", tags=("v1", "room")) as client:
        await eventually(lambda: server.buckets.get("bob") is not None)
        assert server.buckets.get("bob").tags == {"v1", "room"}
        await server.push("bob", b"hi")
        assert (await client.receive()).data == b"hi"


@pytest.mark.parametrize(
    ("codec", "message_type", "expect"),
    [
        ("json", None, aiohttp.WSMsgType.TEXT),
        ("json", "binary", aiohttp.WSMsgType.BINARY),
        ("protobuf", None, aiohttp.WSMsgType.BINARY),
    ],
)
async def test_codec_and_frame_type_per_connection(
    server: Server, codec: str, message_type: str | None, expect: aiohttp.WSMsgType
) -> None:
    params = {"token": "carol", "codec": codec}
    if message_type:
        params["message_type"] = message_type
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(server), params=params) as ws:
            await eventually(lambda: server.local.local_count() == 1)
            result = await server.push("carol", b"\x00\xffbytes", ack=True)
            msg = await ws.receive(timeout=5)
            assert msg.type == expect
            raw = msg.data.encode() if isinstance(msg.data, str) else msg.data
    if codec == "json":
        import base64
        import json

        assert json.loads(raw) == {
            "sid": result.sid,
            "msg": base64.b64encode(b"\x00\xffbytes").decode(),
        }
    else:
        assert ProtobufCodec().decode_push(raw) == (result.sid, b"\x00\xffbytes")


async def test_json_push_without_ack_omits_sid(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(server), params={"token": "dan"}) as ws:
            await eventually(lambda: server.local.local_count() == 1)
            await server.push("dan", b"x")
            assert (await ws.receive(timeout=5)).data == '{"msg":"eA=="}'


async def test_server_default_codec_from_options(make_server) -> None:
    server = await make_server(codec="protobuf", message_type="binary")
    async with Client(ws_url(server), "erin", codec="protobuf") as client:
        await eventually(lambda: server.local.local_count() == 1)
        await server.push("erin", b"pb")
        assert (await client.receive()).data == b"pb"
        assert client.ws is not None


async def test_connected_and_disconnected_hooks(make_server) -> None:
    events: list[tuple] = []

    class Watch:
        @hookimpl
        def im_connected(self, conn) -> None:
            events.append(("connected", conn.user_id))

        @hookimpl
        async def im_disconnected(self, conn, code: int, reason: str) -> None:
            events.append(("disconnected", conn.user_id, code, reason))

    server = await make_server(plugins=(Watch(),))
    client = Client(ws_url(server), "fay")
    await client.connect()
    await eventually(lambda: events == [("connected", "fay")])
    await client.close()
    await eventually(lambda: len(events) == 2)
    assert events[1] == ("disconnected", "fay", 1000, "closed by client")
    assert server.local.local_count() == 0


async def test_second_login_replaces_first(server: Server, connect) -> None:
    first = await connect(server, "gil")
    await eventually(lambda: server.local.local_count() == 1)
    old = server.buckets.get("gil")
    second = await connect(server, "gil")
    assert await first.wait_closed() == CloseCode.REPLACED
    await eventually(lambda: server.buckets.get("gil") is not old)
    assert server.local.local_count() == 1
    await server.push("gil", b"to the new one")
    assert (await second.receive()).data == b"to the new one"


async def test_refused_while_shutting_down(make_server) -> None:
    server = await make_server()
    server.stopping = True
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(ws_url(server), params={"token": "x"}) as resp:
                assert resp.status == 503
    finally:
        server.stopping = False
