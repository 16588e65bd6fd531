"""The WebSocket protocol on the wire after the upgrade: frames, pings, close codes.

A raw client writes frames byte by byte where an ordinary client cannot
(fragmentation, unmasked frames, data right behind the upgrade request).
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Any

import aiohttp

from im_core import CloseCode, Server, hookimpl

from .conftest import eventually, http_url, ws_url

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    masked: bool = True,
    mask: bytes | None = None,
) -> bytes:
    """One client frame; a random mask unless ``mask`` is given (zero keeps it cheap)."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return head + payload
    mask = os.urandom(4) if mask is None else mask
    if mask == b"\0\0\0\0":
        return head + mask + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A WebSocket client built on a bare TCP stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: Server, token: str, after: bytes = b"") -> RawClient:
        port = next(t.port for t in server.transports if t.name == "http")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /conn?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
            + after
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def close_code(self) -> int:
        """Read until the server's close frame; return its code."""
        while True:
            opcode, payload = await self.frame()
            if opcode == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0]

    async def eof(self) -> bool:
        async with asyncio.timeout(5):
            return await self.reader.read() == b""

    def close(self) -> None:
        self.writer.close()


class Recorder:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.closed: list[tuple[str, int, str]] = []

    @hookimpl
    def im_receive(self, conn: Any, data: bytes) -> None:
        self.received.append(data)

    @hookimpl
    def im_disconnected(self, conn: Any, code: int, reason: str) -> None:
        self.closed.append((conn.user_id, code, reason))


async def test_ping_gets_pong_and_refreshes_liveness(server: Server) -> None:
    client = await RawClient.open(server, "alice")
    await eventually(lambda: server.buckets.get("alice"))
    conn = server.buckets.get("alice")
    assert conn is not None
    before = conn.last_seen
    await asyncio.sleep(0.02)
    client.send(client_frame(OP_PING, b"hi"))
    assert await client.frame() == (OP_PONG, b"hi")
    assert conn.last_seen > before
    client.close()


async def test_fragmented_message_arrives_whole(make_server) -> None:
    rec = Recorder()
    server = await make_server(plugins=(rec,))
    client = await RawClient.open(server, "alice")
    client.send(client_frame(OP_TEXT, b"hel", fin=False))
    client.send(client_frame(OP_PING, b""))  # control frames may come between fragments
    client.send(client_frame(OP_CONT, b"lo ", fin=False))
    client.send(client_frame(OP_CONT, b"world"))
    client.send(client_frame(OP_BINARY, b"\x00\x01"))
    assert await client.frame() == (OP_PONG, b"")
    await eventually(lambda: len(rec.received) == 2)
    assert rec.received == [b"hello world", b"\x00\x01"]
    client.close()


async def test_frames_in_order_and_long_lengths(make_server) -> None:
    rec = Recorder()
    server = await make_server(plugins=(rec,), max_frame_size=100_000)
    client = await RawClient.open(server, "alice")
    sent = [str(i).encode() * 30 for i in range(200)] + [b"x" * 300, b"y" * 70_000]
    client.send(b"".join(client_frame(OP_BINARY, m) for m in sent))
    await eventually(lambda: len(rec.received) == len(sent))
    assert rec.received == sent
    client.close()


async def test_data_right_behind_the_upgrade_request_is_kept(make_server) -> None:
    rec = Recorder()
    server = await make_server(plugins=(rec,))
    client = await RawClient.open(server, "alice", after=client_frame(OP_TEXT, b"early"))
    await eventually(lambda: rec.received == [b"early"])
    client.close()


async def test_oversized_frame_closes_1009(make_server) -> None:
    rec = Recorder()
    server = await make_server(plugins=(rec,), max_frame_size=1000)
    client = await RawClient.open(server, "alice")
    client.send(client_frame(OP_BINARY, b"x" * 1001))
    assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG
    await eventually(lambda: rec.closed)
    assert rec.closed[0][:2] == ("alice", CloseCode.MESSAGE_TOO_BIG)


async def test_oversized_fragmented_message_closes_1009(make_server) -> None:
    server = await make_server(max_frame_size=1000)
    client = await RawClient.open(server, "alice")
    client.send(client_frame(OP_TEXT, b"x" * 600, fin=False))
    client.send(client_frame(OP_CONT, b"x" * 600))
    assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG


async def test_unmasked_frame_is_a_protocol_error(make_server) -> None:
    rec = Recorder()
    server = await make_server(plugins=(rec,))
    client = await RawClient.open(server, "alice")
    client.send(client_frame(OP_TEXT, b"hello", masked=False))
    assert await client.close_code() == 1002
    client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
    assert await client.eof()
    assert rec.received == []


async def test_continuation_without_a_message_is_a_protocol_error(server: Server) -> None:
    client = await RawClient.open(server, "alice")
    client.send(client_frame(OP_CONT, b"x"))
    assert await client.close_code() == 1002


async def test_client_close_code_reaches_the_hook(make_server) -> None:
    rec = Recorder()
    server = await make_server(plugins=(rec,))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(ws_url(server) + "?token=alice")
        await eventually(lambda: server.local.local_count() == 1)
        await ws.close(code=4000, message=b"bye")
    await eventually(lambda: rec.closed)
    assert rec.closed == [("alice", 4000, "closed by client")]
    assert server.local.local_count() == 0


async def test_a_push_queued_when_the_client_closes_goes_out_before_the_echo(
    server: Server,
) -> None:
    """A push the API answered as delivered is still in the outbox when the client's
    close frame is read (same loop step): the push is written first, then the echo;
    never a data frame after the close frame."""
    client = await RawClient.open(server, "alice")
    await eventually(lambda: server.buckets.get("alice"))
    conn = server.buckets.get("alice")
    assert conn is not None
    assert not (await server.push("alice", b"queued")).missing  # not written yet
    ws = conn._transport.get_protocol()  # type: ignore[attr-defined]
    ws.data_received(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
    assert (await client.frame())[0] == OP_TEXT
    assert await client.close_code() == 1000
    assert await client.eof()


async def test_dropped_socket_unregisters(make_server) -> None:
    rec = Recorder()
    server = await make_server(plugins=(rec,))
    client = await RawClient.open(server, "alice")
    await eventually(lambda: server.local.local_count() == 1)
    client.writer.transport.abort()
    await eventually(lambda: server.local.local_count() == 0)
    assert rec.closed[0][:2] == ("alice", CloseCode.NORMAL)


async def test_kick_sends_its_code_and_hangs_up_after_the_client_answers(server: Server) -> None:
    client = await RawClient.open(server, "alice")
    await eventually(lambda: server.local.local_count() == 1)
    assert await server.kick("alice")
    assert await client.close_code() == CloseCode.KICKED
    client.send(client_frame(OP_CLOSE, struct.pack("!H", CloseCode.KICKED)))
    assert await client.eof()


async def test_silent_client_gets_pinged_then_timed_out(make_server) -> None:
    server = await make_server(heartbeat_interval=0.2)
    client = await RawClient.open(server, "alice")
    assert (await client.frame())[0] == OP_PING
    assert await client.close_code() == CloseCode.HEARTBEAT_TIMEOUT


async def test_pushes_and_pings_share_the_socket(server: Server, connect) -> None:
    client = await connect(server, "alice")
    await eventually(lambda: server.local.local_count() == 1)
    for i in range(50):
        server.broadcast(str(i).encode())
    got = [(await client.receive()).data for _ in range(50)]
    assert got == [str(i).encode() for i in range(50)]


async def test_a_connection_keeps_no_task(server: Server) -> None:
    await asyncio.sleep(0)
    before = len(asyncio.all_tasks())
    clients = [await RawClient.open(server, f"u{i}") for i in range(20)]
    await eventually(lambda: server.local.local_count() == 20)
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) < before + 5
    for c in clients:
        c.close()


async def test_plain_get_is_refused_with_json(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.get(http_url(server, "/conn?token=alice"))
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_argument"


async def _raw_http(server: Server, request: bytes, *, split: int = 0) -> bytes:
    port = next(t.port for t in server.transports if t.name == "http")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if split:
        writer.write(request[:split])
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.write(request[split:])
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return head


def _upgrade(target: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


async def test_refused_upgrade_gets_json_before_any_101(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.get(
            http_url(server, "/conn?token="),
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                "Sec-WebSocket-Version": "13",
            },
        )
        assert resp.status == 400
        assert (await resp.json())["error"]["message"].startswith("token")


async def test_upgrade_split_across_reads_and_escaped_query(server: Server) -> None:
    head = await _raw_http(server, _upgrade("/chat?token=a%40b&tags=x,y"), split=7)
    assert head.startswith(b"HTTP/1.1 101")
    await eventually(lambda: server.buckets.get("a@b"))
    conn = server.buckets.get("a@b")
    assert conn is not None and conn.tags == {"x", "y"}


async def test_unusual_upgrade_requests_still_upgrade(server: Server) -> None:
    # A GET with a body header is left to aiohttp's parser; the route upgrades it.
    head = await _raw_http(server, _upgrade("/conn?token=bob", "Content-Length: 0\r\n"))
    assert head.startswith(b"HTTP/1.1 101")
    await eventually(lambda: server.buckets.get("bob"))


async def test_http_routes_share_the_port(server: Server, connect) -> None:
    await connect(server, "alice")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # keep-alive: several requests on one connection
            resp = await session.get(http_url(server, "/ping"))
            assert resp.status == 200 and (await resp.json())["data"] == "pong"
        resp = await session.post(http_url(server, "/conn?token=x"))
        assert resp.status == 405
