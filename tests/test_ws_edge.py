"""The WebSocket reader under hostile or careless clients: limits, UTF-8, close
behaviour, and that nothing a client sent before a close is lost."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import aiohttp

from im_core import CloseCode, ConnectRequest, Identity, Server, hookimpl

from .conftest import eventually, http_url, ws_url
from .test_websocket_protocol import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    RawClient,
    client_frame,
)


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    return client_frame(opcode, payload, fin=fin, mask=b"\0\0\0\0")


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.events: list[Any] = []

    @hookimpl
    async def im_receive(self, data: bytes, binary: bool) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.events.append((data, binary))

    @hookimpl
    def im_disconnected(self, code: int) -> None:
        self.events.append(("closed", code))


async def _ping_time(server: Server) -> float:
    async with aiohttp.ClientSession() as http:
        start = time.perf_counter()
        async with http.get(http_url(server, "/ping")) as resp:
            assert resp.status == 200
        return time.perf_counter() - start


# --- fragments: linear accounting and a count limit --------------------------------


async def test_one_byte_fragments_cost_linear_time(make_server) -> None:
    """64 KiB as 65,535 one-byte fragments (took the loop for ~30 s when each
    fragment re-summed the ones before) arrives whole while others are served."""
    rec = Recorder()
    server = await make_server(plugins=(rec,), max_fragments=100_000, max_inbound_rate=0)
    client = await RawClient.open(server, "frag")
    message = bytes(range(256)) * 256
    wire = frame(OP_BINARY, message[:1], fin=False)
    wire += b"".join(frame(OP_CONT, message[i : i + 1], fin=False) for i in range(1, 65535))
    wire += frame(OP_CONT, message[65535:])
    client.send(wire)
    assert await _ping_time(server) < 2.0
    await eventually(lambda: rec.events, timeout=20)
    assert rec.events == [(message, True)]
    client.close()


async def test_fragment_floods_are_closed_1009(make_server) -> None:
    server = await make_server(max_inbound_rate=0)  # else the frame rate limit ends it first
    for payload in (b"x", b""):  # empty fragments count too
        client = await RawClient.open(server, f"flood{len(payload)}")
        client.send(frame(OP_TEXT, payload, fin=False))
        client.send(frame(OP_CONT, payload, fin=False) * 30_000)
        assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG
        client.close()
    assert await _ping_time(server) < 2.0


async def test_message_size_counts_every_fragment(make_server) -> None:
    server = await make_server(max_frame_size=1000)
    client = await RawClient.open(server, "big")
    client.send(frame(OP_BINARY, b"a" * 600, fin=False) + frame(OP_CONT, b"b" * 600))
    assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG


async def test_frame_flood_is_closed_4002(make_server) -> None:
    rec = Recorder()
    server = await make_server(plugins=(rec,), max_inbound_rate=50)
    client = await RawClient.open(server, "flood")
    client.send(frame(OP_PING) * 200)
    assert await client.close_code() == CloseCode.TOO_MANY_FRAMES == 4002
    await eventually(lambda: ("closed", 4002) in rec.events)


# --- UTF-8 (RFC 6455 8.1) ------------------------------------------------------------


async def test_text_that_is_not_utf8_is_closed_1007(server: Server) -> None:
    client = await RawClient.open(server, "bad-text")
    client.send(frame(OP_TEXT, b"ok \xff"))
    assert await client.close_code() == CloseCode.INVALID_DATA == 1007


async def test_fragmented_text_fails_at_the_bad_fragment(server: Server) -> None:
    client = await RawClient.open(server, "bad-frag")
    # A valid start, then a byte that can never be UTF-8: the server closes without
    # waiting for the final fragment.
    client.send(frame(OP_TEXT, "κό".encode(), fin=False) + frame(OP_CONT, b"\xc0\xaf", fin=False))
    assert await client.close_code() == 1007


async def test_text_split_inside_a_character_is_fine(make_server) -> None:
    rec = Recorder()
    server = await make_server(plugins=(rec,))
    client = await RawClient.open(server, "split-char")
    text = "κόσμε".encode()
    client.send(frame(OP_TEXT, text[:3], fin=False) + frame(OP_CONT, text[3:]))
    await eventually(lambda: rec.events)
    assert rec.events == [(text, False)]
    client.close()


# --- nothing received is lost --------------------------------------------------------


async def test_messages_before_a_close_reach_the_hook_before_disconnect(make_server) -> None:
    rec = Recorder(delay=0.05)
    server = await make_server(plugins=(rec,))
    client = await RawClient.open(server, "closer")
    await eventually(lambda: server.buckets.get("closer"))
    messages = [f"m{i}".encode() for i in range(20)]
    client.send(
        b"".join(frame(OP_TEXT, m) for m in messages) + frame(OP_CLOSE, struct.pack("!H", 1000))
    )
    assert await client.close_code() == 1000  # a clean close, answered at once
    await eventually(lambda: ("closed", 1000) in rec.events, timeout=5)
    assert rec.events == [*((m, False) for m in messages), ("closed", 1000)]


async def test_messages_before_a_protocol_error_or_a_reset_are_kept(make_server) -> None:
    rec = Recorder(delay=0.02)
    server = await make_server(plugins=(rec,))
    client = await RawClient.open(server, "broken")
    await eventually(lambda: server.buckets.get("broken"))
    client.send(frame(OP_BINARY, b"a") + frame(OP_BINARY, b"b") + b"\x81\x05hello")  # unmasked
    assert await client.close_code() == CloseCode.PROTOCOL_ERROR
    await eventually(lambda: len(rec.events) == 3)
    assert rec.events == [(b"a", True), (b"b", True), ("closed", 1002)]

    rec.events.clear()
    client = await RawClient.open(server, "reset")
    await eventually(lambda: server.buckets.get("reset"))
    client.send(frame(OP_TEXT, b"x") + frame(OP_TEXT, b"y"))
    await client.writer.drain()
    client.writer.transport.abort()
    await eventually(lambda: len(rec.events) == 3)
    assert rec.events[:2] == [(b"x", False), (b"y", False)] and rec.events[2][0] == "closed"


async def test_messages_sent_right_behind_the_upgrade_survive_a_close(make_server) -> None:
    class SlowAuth:
        @hookimpl
        async def im_validate(self, request: ConnectRequest) -> Identity:
            await asyncio.sleep(0.1)
            return Identity(request.token)

    rec = Recorder()
    server = await make_server(plugins=(SlowAuth(), rec))
    after = frame(OP_TEXT, b"early") + frame(OP_CLOSE, struct.pack("!H", 1000))
    client = await RawClient.open(server, "early", after=after)
    assert await client.close_code() == 1000
    await eventually(lambda: ("closed", 1000) in rec.events)
    assert rec.events == [(b"early", False), ("closed", 1000)]


# --- closing -------------------------------------------------------------------------


async def test_invalid_client_close_is_answered_and_hung_up_at_once(server: Server) -> None:
    client = await RawClient.open(server, "bad-close")
    start = time.perf_counter()
    client.send(frame(OP_CLOSE, struct.pack("!H", 999)))
    assert await client.close_code() == CloseCode.PROTOCOL_ERROR
    assert await client.eof()
    assert time.perf_counter() - start < 1.0  # not the 2 s wait for a second close


async def test_close_reason_is_cut_on_a_character_boundary(server: Server) -> None:
    client = await RawClient.open(server, "kicked")
    await eventually(lambda: server.buckets.get("kicked"))
    assert await server.kick("kicked", "é" * 100)
    while True:
        opcode, payload = await client.frame()
        if opcode == OP_CLOSE:
            break
    assert struct.unpack("!H", payload[:2])[0] == CloseCode.KICKED
    reason = payload[2:].decode()  # valid UTF-8: not a 1007 at the client
    assert len(payload) <= 125 and reason == "é" * 61


async def test_client_close_code_is_echoed(server: Server) -> None:
    client = await RawClient.open(server, "echo-close")
    client.send(frame(OP_CLOSE, struct.pack("!H", 4321) + b"bye"))
    assert await client.close_code() == 4321


# --- identities ----------------------------------------------------------------------


async def test_user_id_and_tag_limits(make_server) -> None:
    server = await make_server(max_user_id_length=64, max_tags=3)
    async with aiohttp.ClientSession() as http:
        for params in (
            {"token": "u" * 65},
            {"token": "t", "device": "d" * 65},
            {"token": "t", "tags": "a,b,c,d"},
        ):
            async with http.get(ws_url(server), params=params, headers=_UPGRADE) as resp:
                assert resp.status == 400, params
                message = (await resp.json())["error"]["message"]
                assert "longer than 64" in message or "more than 3 tags" in message
        ws = await http.ws_connect(ws_url(server), params={"token": "t", "tags": "a,b"})
        await eventually(lambda: server.buckets.get("t"))
        assert await server.retag("t", add=["c"])
        async with http.post(
            http_url(server, "/api/v1/retag"), json={"user": "t", "add": ["d"]}
        ) as resp:
            assert resp.status == 400
            assert "max_tags" in (await resp.json())["error"]["message"]
        await ws.close()


_UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


async def test_reply_answers_in_the_kind_received(make_server) -> None:
    class Echo:
        @hookimpl
        def im_receive(self, conn: Any, data: bytes, binary: bool) -> None:
            conn.reply(data, binary=binary)

    server = await make_server(plugins=(Echo(),))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_url(server), params={"token": "echo"})
        await ws.send_str("hi")
        text = await ws.receive(timeout=5)
        await ws.send_bytes(b"\x00\x01")
        binary = await ws.receive(timeout=5)
        await ws.close()
    assert text.type == aiohttp.WSMsgType.TEXT and text.data == '{"msg":"aGk="}'
    assert binary.type == aiohttp.WSMsgType.BINARY and binary.data == b'{"msg":"AAE="}'


async def test_pings_from_a_client_that_does_not_read_are_bounded(make_server) -> None:
    server = await make_server(client_buffer_bytes=4096, max_inbound_rate=0)
    client = await RawClient.open(server, "noread")
    await eventually(lambda: server.buckets.get("noread"))
    client.writer.transport.pause_reading()
    ping = frame(OP_PING, b"p" * 125)
    for _ in range(200):
        client.send(ping * 100)
        await client.writer.drain()
    conn = server.buckets.get("noread")
    assert conn is not None
    # Pongs stop once the socket's backlog is over the bound: memory stays small.
    assert conn._transport.get_write_buffer_size() < 64 * 1024  # type: ignore[attr-defined]
    client.close()
