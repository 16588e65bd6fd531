"""The front: one admission path for every request head, whole or split, and the
bounds on time and size before a request is complete."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import tomllib
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest

from im_core import ConnectRequest, Server, hookimpl
from im_plugins.http import front

from .conftest import eventually, http_url

KEY = base64.b64encode(os.urandom(16)).decode()


def _port(server: Server) -> int:
    return next(t.port for t in server.transports if t.name == "http")


def upgrade(target: str = "/conn?token=u", *, drop: str = "", extra: str = "", method="GET"):
    headers = {
        "Host": "x",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k != drop]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


async def exchange(server: Server, request: bytes, *, split: bool = False) -> tuple[int, bytes]:
    """Send ``request`` whole or one byte per write; return (status, the answer's head+body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if split:
            for i in range(len(request)):
                writer.write(request[i : i + 1])
                await writer.drain()
                if i % 64 == 0:
                    await asyncio.sleep(0)
        else:
            writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            return status, head
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        return status, head + await reader.readexactly(length)
    finally:
        writer.close()


BAD = {
    "100 KB header": (upgrade(extra="X-Big: " + "a" * 100_000 + "\r\n"), 431),
    "5,000 headers": (upgrade(extra="".join(f"X-{i}: v\r\n" for i in range(5000))), 431),
    "NUL in a value": (upgrade(extra="X-Nul: a\x00b\r\n"), 400),
    "space in a name": (upgrade(extra="X Bad: v\r\n"), 400),
    "folded line": (upgrade(extra="X-A: v\r\n  folded\r\n"), 400),
    "no Host": (upgrade(drop="Host"), 400),
    "two keys": (upgrade(extra=f"Sec-WebSocket-Key: {KEY}\r\n"), 400),
    "HEAD": (upgrade(method="HEAD"), 405),
    "POST": (upgrade(method="POST"), 405),
    "version 8": (upgrade().replace(b"Version: 13", b"Version: 8"), 426),
    "no version": (upgrade(drop="Sec-WebSocket-Version"), 426),
    "bad key": (upgrade().replace(KEY.encode(), b"c2hvcnQ="), 400),
    "body": (upgrade(extra="Content-Length: 5\r\n"), 400),
    "HTTP/1.0": (upgrade().replace(b"HTTP/1.1", b"HTTP/1.0"), 400),
    "not HTTP": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n", 400),
    "no token": (upgrade("/conn"), 400),
}


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_upgrades_get_the_same_answer_however_split(
    server: Server, case: str, split: bool
) -> None:
    request, status = BAD[case]
    got, answer = await exchange(server, request, split=split)
    assert got == status, answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["message"] and body["status"] == status
    if status == 426:
        assert b"Sec-WebSocket-Version: 13" in answer
    if status == 405:
        assert b"Allow: GET" in answer
    assert server.local.local_count() == 0


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
async def test_good_upgrade_whole_or_split(server: Server, split: bool) -> None:
    token = f"user-{split}"
    status, head = await exchange(
        server, upgrade(f"/chat?token={token}&tags=x,y", extra="Content-Length: 0\r\n"), split=split
    )
    assert status == 101, head
    await eventually(lambda: server.buckets.get(token))


async def _ping_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One keep-alive request and its whole answer."""
    writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)


async def test_upgrade_after_a_request_on_a_keep_alive_connection(server: Server) -> None:
    """The aiohttp route applies the same rules as the front."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
    try:
        await _ping_on(reader, writer)
        writer.write(upgrade("/conn?token=later").replace(b"Version: 13", b"Version: 8"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 426") and b"Sec-WebSocket-Version: 13" in head
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
    try:
        await _ping_on(reader, writer)
        writer.write(upgrade("/conn?token=later"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        await eventually(lambda: server.buckets.get("later"))
    finally:
        writer.close()
    await eventually(lambda: server.local.local_count() == 0)


async def test_validate_hook_that_raises_gets_500_and_one_log_line(
    make_server, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        @hookimpl
        def im_validate(self, request: ConnectRequest) -> None:
            raise RuntimeError("validator bug")

    server = await make_server(plugins=(Broken(),))
    status, answer = await exchange(server, upgrade())
    assert status == 500 and b"internal error" in answer and b"validator bug" not in answer
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None


async def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before it closed ``sock`` (fails if it stays open)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    data = b""
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), deadline - loop.time())
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"still open after {seconds} s; got {data!r}")


async def test_silent_socket_is_closed_after_idle_timeout(make_server) -> None:
    server = await make_server(idle_timeout=0.3)
    sock = socket.create_connection(("127.0.0.1", _port(server)))
    try:
        assert await _closed_within(sock, 3) == b""
    finally:
        sock.close()


async def test_slow_head_gets_408_after_header_timeout(make_server) -> None:
    server = await make_server(header_timeout=0.4)
    sock = socket.create_connection(("127.0.0.1", _port(server)))
    try:
        sock.sendall(b"GET /conn?token=slow HTTP/1.1\r\nHo")  # ... and never the rest
        answer = await _closed_within(sock, 3)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer


async def test_connection_limits_refuse_before_the_upgrade(make_server) -> None:
    server = await make_server(max_connections=3)
    port = _port(server)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        await eventually(lambda: _gate(server).total == 3)
        status, answer = await exchange(server, upgrade())
        assert status == 503 and b"Retry-After" in answer
    finally:
        for sock in held:
            sock.close()
    await eventually(lambda: _gate(server).total == 0)
    status, _ = await exchange(server, upgrade("/conn?token=after"))
    assert status == 101


async def test_per_address_limits(make_server) -> None:
    server = await make_server(max_connections_per_ip=2)
    held = [socket.create_connection(("127.0.0.1", _port(server))) for _ in range(2)]
    try:
        await eventually(lambda: _gate(server).total == 2)
        status, _ = await exchange(server, upgrade())
        assert status == 429
    finally:
        for sock in held:
            sock.close()
    server = await make_server(max_connect_rate_per_ip=5)
    statuses = [(await exchange(server, upgrade(f"/conn?token=r{i}")))[0] for i in range(8)]
    assert statuses.count(429) >= 1 and statuses[0] == 101


def _gate(server: Server) -> front.Gate:
    transport = next(t for t in server.transports if t.name == "http")
    return transport.edge.gate  # type: ignore[attr-defined,no-any-return]


def test_aiohttp_is_pinned_to_the_tested_minor_versions() -> None:
    """The upgrade route takes sockets over from aiohttp through its internals."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("aiohttp"))
    low, high = re.fullmatch(r"aiohttp>=([\d.]+),<([\d.]+)", pin).groups()  # type: ignore[union-attr]

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split(".")[:3])

    assert key(low) <= key(version("aiohttp")) < key(high)
    handler = aiohttp.web_protocol.RequestHandler
    assert "_message_tail" in handler.__slots__


async def test_refusals_are_logged_at_most_once_per_interval(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="im.http")
    for _ in range(20):
        await exchange(server, upgrade("/conn"))
    lines = [r for r in caplog.records if "refused 400" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None


async def test_ping_still_served(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(http_url(server, "/ping")) as resp:
            assert resp.status == 200
