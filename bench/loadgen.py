"""Raw-socket WebSocket clients that only count bytes.

Each client does the HTTP upgrade by hand and then counts what arrives, so a
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
from collections.abc import Sequence


def upgrade_request(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (the mask is zero: valid, and the payload stays readable)."""
    n = len(payload)
    head = bytes((0x80 | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 1 << 16:
        head += struct.pack("!BH", 0x80 | 126, n)
    else:
        head += struct.pack("!BQ", 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


class Counter(asyncio.Protocol):
    """One idle client: upgrade, optional hello frame, then count received bytes."""

    __slots__ = ("done_at", "got", "head", "pool", "ready", "transport", "upgraded")

    def __init__(self, pool: Pool, request: bytes, upgraded: asyncio.Future[bool]) -> None:
        self.pool = pool
        self.head = request  # the upgrade request until sent, then the response head
        self.upgraded = upgraded
        self.got = 0
        self.ready = False
        self.done_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.head)  # type: ignore[attr-defined]
        self.head = b""

    def data_received(self, data: bytes) -> None:
        if self.ready:
            got = self.got = self.got + len(data)
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
        # Spread clients over source addresses 127.0.0.2-51: each has its own ephemeral
        # ports, so TIME_WAIT sockets left by earlier runs do not slow connect() down.
        sources = itertools.cycle([f"127.0.0.{i}" for i in range(2, 52)])
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
