"""Raw-socket WebSocket clients: ones that only count bytes, and ones that read frames.

Each counting client does the HTTP upgrade by hand and then counts what arrives, so a
client costs one ``data_received`` call per read however many frames the read
holds: the load generator stays far from being the bottleneck. Servers send
fixed-size frames, so "got exactly M frames" is "got exactly M x frame bytes".
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import struct
import time
from collections.abc import Iterator, Sequence


def source_addresses() -> Iterator[str]:
    """127.0.0.2-51 round-robin: each source address has its own ephemeral ports, so
    TIME_WAIT sockets left by earlier runs do not slow connect() down."""
    return itertools.cycle([f"127.0.0.{i}" for i in range(2, 52)])


def upgrade_request(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame (the mask is zero: valid, and the payload stays readable)."""
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 1 << 16:
        head += struct.pack("!BH", 0x80 | 126, n)
    else:
        head += struct.pack("!BQ", 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


class ServerFrames:
    """Incremental parser of (unmasked) server frames: feed bytes, get (opcode, payload)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf + data if self.buf else data
        out, pos, n = [], 0, len(buf)
        while n - pos >= 2:
            length, head = buf[pos + 1] & 0x7F, pos + 2
            if length >= 126:
                size = 2 if length == 126 else 8
                if n - head < size:
                    break
                length = int.from_bytes(buf[head : head + size], "big")
                head += size
            if n - head < length:
                break
            out.append((buf[pos] & 0x0F, buf[head : head + length]))
            pos = head + length
        self.buf = buf[pos:]
        return out


def close_code(payload: bytes) -> int:
    """The status code of a close frame's payload (1005: none given, RFC 6455 7.1.5)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


class WsClient(asyncio.Protocol):
    """A client that reads frames: sends ``request`` (an upgrade, or b""), parses the
    answer, hands each server frame to ``on_frame`` and records how the socket ended:
    ``outcome`` is "" while open, then ``close CODE``, ``http STATUS``, ``eof`` or
    ``reset``."""

    def __init__(self, request: bytes = b"") -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.frames: ServerFrames | None = None  # set once upgraded
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[bool] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.outcome = ""
        self.opened = time.monotonic()
        self.ended = 0.0

    @property
    def open(self) -> bool:
        return not self.outcome

    @property
    def is_upgraded(self) -> bool:
        return self.frames is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.request:
            transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.frames is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(self.head.split(b" ", 2)[1])
            data, self.head = self.head[end + 4 :], b""
            if status != 101:
                self.end(f"http {status}")
                return
            self.frames = ServerFrames()
            if not self.upgraded.done():
                self.upgraded.set_result(True)
        for opcode, payload in self.frames.feed(data):
            if opcode == 0x8:
                self.end(f"close {close_code(payload)}")
            else:
                self.on_frame(opcode, payload)

    def on_frame(self, opcode: int, payload: bytes) -> None:
        """A server frame other than close."""

    def eof_received(self) -> bool | None:
        self.end("eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.end("reset" if isinstance(exc, ConnectionResetError) else "eof")

    def end(self, outcome: str) -> None:
        if not self.outcome:
            self.outcome, self.ended = outcome, time.monotonic()
            self.done.set_result(None)
        if not self.upgraded.done():
            self.upgraded.set_result(False)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Counter(asyncio.Protocol):
    """One idle client: upgrade, optional hello frame, then count received bytes."""

    __slots__ = ("done_at", "got", "head", "pool", "ready", "stamps", "transport", "upgraded")

    def __init__(self, pool: Pool, request: bytes, upgraded: asyncio.Future[bool]) -> None:
        self.pool = pool
        self.head = request  # the upgrade request until sent, then the response head
        self.upgraded = upgraded
        self.got = 0
        self.ready = False
        self.done_at = 0.0
        self.transport: asyncio.Transport | None = None
        #: (time, bytes so far) of each read, for the few clients that time messages
        self.stamps: list[tuple[float, int]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.head)  # type: ignore[attr-defined]
        self.head = b""

    def data_received(self, data: bytes) -> None:
        if self.ready:
            got = self.got = self.got + len(data)
            if self.stamps is not None:
                self.stamps.append((time.perf_counter(), got))
            pool = self.pool
            if got >= pool.expect and not self.done_at:
                self.done_at = time.perf_counter()
                pool.finished += 1
                if pool.finished >= pool.target and not pool.all_done.done():
                    pool.all_done.set_result(self.done_at)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        ok = self.head.startswith(b"HTTP/1.1 101")
        if ok:
            self.got = len(self.head) - end - 4
            self.ready = True
            if self.pool.hello:
                self.transport.write(self.pool.hello)  # type: ignore[union-attr]
        self.head = b""
        if not self.upgraded.done():
            self.upgraded.set_result(ok)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost += 1
        if not self.upgraded.done():
            self.upgraded.set_result(False)


class Pool:
    """N clients of one server, opened with bounded concurrency."""

    def __init__(self, host: str, port: int, hello: bytes = b"") -> None:
        self.host, self.port = host, port
        self.hello = hello
        self.clients: list[Counter] = []
        self.failed = self.lost = self.finished = 0
        self.target = 0
        self.expect = 1 << 62
        self.all_done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def open(self, paths: Sequence[str], concurrency: int = 64) -> float:
        """Open one client per path; return upgraded connections per second."""
        loop = asyncio.get_running_loop()
        sources = source_addresses()
        t0 = time.perf_counter()

        async def worker(mine: Sequence[str]) -> None:
            for path in mine:
                request = upgrade_request(self.host, self.port, path)
                fut: asyncio.Future[bool] = loop.create_future()
                try:
                    _, client = await loop.create_connection(
                        lambda r=request, f=fut: Counter(self, r, f),
                        self.host,
                        self.port,
                        local_addr=(next(sources), 0),
                    )
                except OSError:
                    self.failed += 1
                    continue
                if await fut:
                    self.clients.append(client)
                else:
                    self.failed += 1

        chunks = [paths[i::concurrency] for i in range(concurrency)]
        await asyncio.gather(*(worker(c) for c in chunks if c))
        return len(self.clients) / (time.perf_counter() - t0)

    def arm(self, expect: int) -> asyncio.Future[float]:
        """Zero every counter and wait for each client to reach ``expect`` bytes."""
        self.expect = expect
        self.finished = 0
        self.target = len(self.clients)
        self.all_done = asyncio.get_running_loop().create_future()
        for c in self.clients:
            c.got = 0
            c.done_at = 0.0
            if c.stamps is not None:
                c.stamps = []
        return self.all_done

    def counts(self) -> dict[int, int]:
        """Histogram: bytes received -> number of clients."""
        hist: dict[int, int] = {}
        for c in self.clients:
            hist[c.got] = hist.get(c.got, 0) + 1
        return hist

    def close(self) -> None:
        for c in self.clients:
            if c.transport is not None:
                c.transport.abort()
        self.clients.clear()
