"""The SSE (EventSource) transport over real sockets: the stream, POSTs, closes."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from im_core import ConnectRequest, Identity, Reject, Server, hookimpl
from im_plugins.http.options import HttpOptions

from .conftest import eventually, http_url


class Stream:
    """One event stream read line by line: events as dicts of their fields."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.session = ""

    async def next(self, timeout: float = 5.0) -> dict[str, str]:
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                line = await self.resp.content.readline()
                if not line:
                    raise EOFError
                text = line.decode().rstrip("\n")
                if not text:
                    if fields:
                        return fields
                    continue
                name, _, value = text.partition(":")
                fields[name or "comment"] = value.removeprefix(" ")

    async def message(self) -> tuple[str, dict[str, Any]]:
        """The next push event (skipping comments): its id and decoded data."""
        while True:
            ev = await self.next()
            if "comment" not in ev:
                assert "event" not in ev, ev
                return ev.get("id", ""), orjson.loads(ev["data"])


@pytest.fixture
async def sse(session: aiohttp.ClientSession) -> AsyncIterator[Any]:
    opened: list[aiohttp.ClientResponse] = []

    async def open_stream(server: Server, token: str = "", **kw: Any) -> Stream:
        params = {"token": token} if token else {}
        resp = await session.get(http_url(server, "/sse"), params=params, **kw)
        opened.append(resp)
        assert resp.status == 200, await resp.text()
        stream = Stream(resp)
        first = await stream.next()
        assert first["event"] == "session"
        body = orjson.loads(first["data"])
        stream.session = body["session"]
        return stream

    yield open_stream
    for resp in opened:
        resp.close()


async def post(session: aiohttp.ClientSession, server: Server, sid: str, body: bytes) -> int:
    url = http_url(server, "/sse/send")
    async with session.post(url, params={"session": sid}, data=body) as resp:
        return resp.status


async def test_connect_sends_session_event(server, session) -> None:
    async with session.get(http_url(server, "/sse"), params={"token": "ann"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        first = await Stream(resp).next()
        assert first["event"] == "session"
        body = orjson.loads(first["data"])
        assert body["user"] == "ann" and len(body["session"]) >= 20
        await eventually(lambda: server.local.local_count() == 1)


async def test_bearer_token(server, sse) -> None:
    await sse(server, headers={"Authorization": "Bearer bob"})
    await eventually(lambda: server.buckets.get("bob") is not None)


async def test_push_arrives_as_event(server, sse) -> None:
    stream = await sse(server, "ann")
    await eventually(lambda: server.local.local_count() == 1)
    await server.push("ann", b"hello\nworld")
    sid, data = await stream.message()
    assert sid == "" and "sid" not in data
    assert base64.b64decode(data["msg"]) == b"hello\nworld"


async def test_acked_push_carries_sid_and_post_ack_clears_it(server, sse, session) -> None:
    stream = await sse(server, "ann")
    await eventually(lambda: server.local.local_count() == 1)
    result = await server.push("ann", b"important", ack=True)
    sid, data = await stream.message()
    assert sid == str(result.sid) and data["sid"] == result.sid

    async def unacked() -> int:
        async with session.get(http_url(server, "/api/v1/stats")) as resp:
            return int((await resp.json())["unacked"])

    assert await unacked() == 1
    ack = orjson.dumps({"ack": result.sid})
    assert await post(session, server, stream.session, ack) == 204
    assert await unacked() == 0


async def test_posted_message_reaches_receive_hook(make_server, sse, session) -> None:
    got: list[tuple[str, bytes, bool]] = []

    class Echo:
        @hookimpl
        def im_receive(self, conn, data: bytes, binary: bool) -> None:
            got.append((conn.user_id, data, binary))
            conn.reply(b"re: " + data)

    server = await make_server(plugins=(Echo(),))
    stream = await sse(server, "ann")
    assert await post(session, server, stream.session, b'{"text": "hi"}') == 204
    assert got == [("ann", b'{"text": "hi"}', False)]
    _, data = await stream.message()
    assert base64.b64decode(data["msg"]) == b're: {"text": "hi"}'


async def test_refusals_before_the_stream(make_server, session) -> None:
    class Auth:
        @hookimpl
        def im_validate(self, request: ConnectRequest):
            return Identity("ann") if request.token == "good" else Reject("bad token")

    server = await make_server(plugins=(Auth(),))
    url = http_url(server, "/sse")
    async with session.get(url, params={"token": "nope"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["message"] == "bad token"
    async with session.get(url, params={"token": "good", "codec": "protobuf"}) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"


async def test_unknown_session_and_oversized_body(server, sse, session) -> None:
    assert await post(session, server, "nope", b"{}") == 404
    stream = await sse(server, "ann")
    big = b"x" * (server.options.of(HttpOptions).max_frame_size + 1)
    assert await post(session, server, stream.session, big) == 413
    assert await post(session, server, stream.session, b"") == 204  # a heartbeat


@pytest.mark.parametrize("second", ["sse", "websocket"])
async def test_second_login_closes_the_stream(server, sse, connect, session, second) -> None:
    stream = await sse(server, "ann")
    await eventually(lambda: server.local.local_count() == 1)
    if second == "sse":
        await sse(server, "ann")
    else:
        await connect(server, "ann")
    ev = await stream.next()
    assert ev["event"] == "close"
    assert orjson.loads(ev["data"])["code"] == 4501
    with pytest.raises(EOFError):
        await stream.next()
    assert await post(session, server, stream.session, b"") == 404
    assert server.local.local_count() == 1


async def test_heartbeat_comments_and_post_keeps_alive(make_server, sse, session) -> None:
    server = await make_server(heartbeat_interval=0.4)
    stream = await sse(server, "ann")
    assert (await stream.next())["comment"] == "ping"
    for _ in range(6):  # 1.2 s: past 2 x heartbeat, alive thanks to the POSTs
        assert await post(session, server, stream.session, b"") == 204
        await asyncio.sleep(0.2)
    assert server.buckets.get("ann") is not None
    while "comment" in (ev := await stream.next()):
        pass
    assert ev["event"] == "close" and orjson.loads(ev["data"])["code"] == 4000


async def test_reconnect_redelivers_unacked(server, sse, session) -> None:
    stream = await sse(server, "ann")
    await eventually(lambda: server.local.local_count() == 1)
    result = await server.push("ann", b"keep", ack=True)
    sid, _ = await stream.message()
    stream.resp.close()  # the browser lost the stream; EventSource reconnects
    await eventually(lambda: server.local.local_count() == 0)
    again = await sse(server, "ann", headers={"Last-Event-ID": sid})
    sid2, data = await again.message()
    assert sid2 == str(result.sid) and base64.b64decode(data["msg"]) == b"keep"
    assert await post(session, server, again.session, orjson.dumps({"ack": result.sid})) == 204
    await eventually(lambda: not server.acks.pending("ann"))


async def test_client_leaving_while_registering(make_server, session) -> None:
    gone: list[int] = []

    class Slow:
        @hookimpl
        async def im_connected(self, conn) -> None:
            await asyncio.sleep(0.3)

        @hookimpl
        def im_disconnected(self, conn, code: int) -> None:
            gone.append(code)

    server = await make_server(plugins=(Slow(),))
    resp = await session.get(http_url(server, "/sse"), params={"token": "ann"})
    assert (await Stream(resp).next())["event"] == "session"
    resp.close()
    await eventually(lambda: gone == [1000])
    assert server.local.local_count() == 0


async def test_a_client_sending_on_its_stream_is_closed(server) -> None:
    """An event stream reads nothing: a client that keeps sending on it is closed
    (4500) instead of being read for free."""
    port = int(http_url(server).rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /sse?token=chatty HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"event: session")
    await eventually(lambda: server.local.local_count() == 1)
    try:
        for _ in range(20):
            writer.write(b"x" * 8192)
            await writer.drain()
    except ConnectionError:
        pass
    rest = b""
    try:  # the server hangs up on unread bytes: the close event, then maybe a reset
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            rest += chunk
    except ConnectionError:
        pass
    assert b"event: close" in rest and b'"code":4500' in rest
    await eventually(lambda: server.local.local_count() == 0)
    writer.close()
