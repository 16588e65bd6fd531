"""Unicast: pushes to one user each, through the push APIs, to WebSocket clients.

USERS clients connect; the harness pushes N messages, each to one user chosen
round-robin, and stops the clock when every client has received its share. Each
mode runs at full rate (CONCURRENCY calls in flight) for pushes/s, then paced at
RATE pushes/s (and at half its own full rate when that is lower) for the push ->
client latency (p50 / p99; sender and receivers share this process's clock: the
payload carries the send time).

Modes: ``grpc`` (im: unary ``im.v1.Im/PushUser``), ``http`` (``POST push_user``,
CONCURRENCY keep-alive connections; im's ``/api/v1/push_user`` and the same route
on each peer), and for im only ``grpc-stream`` (``PushStream``, batches of BATCH)
and ``http-stream`` (``POST /api/v1/push_stream``, one NDJSON body).

    python -m bench unicast --runs 3                 # im gRPC + HTTP, peers HTTP
    python -m bench unicast --servers im --modes grpc,http,grpc-stream,http-stream
"""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import orjson

from im_plugins.json_codec import JsonCodec
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

from .servers import HOST, IM, SOCKETIO, Running, Spec, running

USERS = 100
N = 20000
WARMUP = 1000
CONCURRENCY = 32
BATCH = 100
#: half the 10,000 pushes/s goal: the rate the p99 goal is stated at
RATE = 5000.0
PACED_SECONDS = 2.0
#: modes each server serves; im's stream modes only on request (``--modes``)
DEFAULT_MODES = ("grpc", "http")
PEER_MODES = ("http",)
CODEC = JsonCodec()
Send = Callable[[int], Awaitable[None]]


def stamp() -> bytes:
    """64 ASCII bytes starting with the send time (socket.io events must be text)."""
    return b"%020.9f" % time.perf_counter() + b"x" * 44


def sent_at(payload: bytes) -> float:
    return float(payload[:20])


class Receivers:
    """USERS WebSocket clients that count frames and record push -> client latency."""

    def __init__(self, spec: Spec, port: int, users: int) -> None:
        self.spec = spec
        self.urls = [f"http://{HOST}:{port}{spec.client_path(i)}" for i in range(users)]
        self.users = [f"u{i}" for i in range(users)]
        self.received = 0
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.expected = 0

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.sockets = [await session.ws_connect(url) for url in self.urls]
        if self.spec is SOCKETIO:  # Engine.IO open packet, then join the default namespace
            for ws in self.sockets:
                await ws.receive()
                await ws.send_str("40")
                await ws.receive()
        self.tasks = [asyncio.ensure_future(self._read(ws)) for ws in self.sockets]

    def _payload(self, data: str | bytes) -> bytes | None:
        if self.spec is IM:
            return CODEC.decode_push(data.encode() if isinstance(data, str) else data)[1]
        if self.spec is SOCKETIO:  # 42["m","<text>"]
            text = data if isinstance(data, str) else data.decode()
            return orjson.loads(text[2:])[1].encode() if text.startswith("42") else None
        return data if isinstance(data, bytes) else data.encode()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            payload = self._payload(msg.data)
            if payload is None:
                continue
            self.latencies.append(time.perf_counter() - sent_at(payload))
            self.received += 1
            if self.received >= self.expected:
                self.done.set()

    def expect(self, n: int) -> None:
        self.received, self.latencies, self.expected = 0, [], n
        self.done.clear()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for ws in self.sockets:
            await ws.close()


async def paced(n: int, rate: float | None, concurrency: int, push: Send) -> None:
    """Call ``push(i)`` n times: CONCURRENCY at a time, or at ``rate`` per second."""
    if rate:
        start, tasks = time.perf_counter(), set()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(push(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        return
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await push(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def http_post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes
) -> tuple[int, bytes]:
    """One JSON POST on a keep-alive connection: (status, reply body)."""
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: im\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return status, await reader.readexactly(length)


class HttpPool:
    """A lean HTTP/1.1 client: SIZE keep-alive connections, one request on each at a
    time. aiohttp's client costs the load generator more CPU than the server spends
    per request, and its pool added stalls of 35-140 ms to p99."""

    def __init__(self, base: str, size: int) -> None:
        url = urllib.parse.urlsplit(base)
        self.host, self.port, self.path = url.hostname, url.port, url.path
        self.size = size
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None

    async def call(self, route: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` to ``route``: (status, reply body), whatever the status."""
        if self.free is None:
            self.free = asyncio.Queue()
            for _ in range(self.size):
                self.free.put_nowait(await asyncio.open_connection(self.host, self.port))
        reader, writer = await self.free.get()
        status, reply = await http_post(reader, writer, self.path + route, body)
        self.free.put_nowait((reader, writer))
        return status, reply

    async def post(self, route: str, body: bytes) -> bytes:
        status, reply = await self.call(route, body)
        if status != 200:
            raise RuntimeError(f"{route}: {status} {reply[:200]!r}")
        return reply

    def close(self) -> None:
        while self.free is not None and not self.free.empty():
            self.free.get_nowait()[1].close()


def make_sender(
    mode: str, server: Running, users: list[str], rate: float | None, stub: Any, pool: HttpPool
) -> Send:
    """``send(n)``: push n messages the way ``mode`` does."""

    def user(i: int) -> str:
        return users[i % len(users)]

    if mode == "grpc":

        async def push_grpc(i: int) -> None:
            await stub.PushUser(pb.PushUserRequest(user=user(i), data=stamp()))

        return lambda n: paced(n, rate, CONCURRENCY, push_grpc)

    if mode == "http":

        async def push_http(i: int) -> None:
            body = {"user": user(i), "data_b64": base64.b64encode(stamp()).decode()}
            await pool.post("push_user", orjson.dumps(body))

        return lambda n: paced(n, rate, CONCURRENCY, push_http)

    async def batches(n: int) -> AsyncIterator[tuple[int, int]]:
        for start in range(0, n, BATCH):
            size = min(n, start + BATCH) - start
            yield start, size
            if rate:
                await asyncio.sleep(size / rate)

    if mode == "grpc-stream":

        async def requests(n: int) -> AsyncIterator[pb.PushBatch]:
            async for start, size in batches(n):
                pushes = [
                    pb.StreamPush(users=[user(i)], data=stamp()) for i in range(start, start + size)
                ]
                yield pb.PushBatch(pushes=pushes)

        async def stream(n: int) -> None:
            async for result in stub.PushStream(requests(n)):
                raise RuntimeError(f"unexpected result: {result}")

        return stream

    if mode != "http-stream":
        raise ValueError(f"unknown mode {mode!r}")

    LINE = b'{"users":["%s"],"data_b64":"%s"}\n'

    async def body(n: int) -> AsyncIterator[bytes]:
        async for start, size in batches(n):
            yield b"".join(
                LINE % (user(i).encode(), base64.b64encode(stamp()))
                for i in range(start, start + size)
            )

    async def post(n: int) -> None:
        async with server.session.post(server.base + "push_stream", data=body(n)) as r:
            reply = await r.json()
            if reply["processed"] != n or reply["results"]:
                raise RuntimeError(f"unexpected reply: {str(reply)[:200]}")

    return post


async def run_mode(
    mode: str, server: Running, rx: Receivers, n: int, rate: float | None
) -> dict[str, float]:
    """Push ``n`` (after WARMUP untimed) in ``mode``; rate, latency and who was busy."""
    pool = HttpPool(server.base, CONCURRENCY)
    async with grpc.aio.insecure_channel(f"{HOST}:{server.rpc_port}") as channel:
        send = make_sender(mode, server, rx.users, rate, im_v1_pb2_grpc.ImStub(channel), pool)
        try:
            for count in (WARMUP, n):
                rx.expect(count)
                cpu0, t0, own0 = server.cpu_seconds(), time.perf_counter(), time.process_time()
                await send(count)
                await asyncio.wait_for(rx.done.wait(), 60)
                elapsed = time.perf_counter() - t0
        finally:
            pool.close()
    lat = sorted(rx.latencies)
    return {
        "per_s": n / elapsed,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "server_busy": round((server.cpu_seconds() - cpu0) / elapsed, 2),
        "loadgen_busy": round((time.process_time() - own0) / elapsed, 2),
    }


async def unicast_session(
    spec: Spec, users: int, modes: tuple[str, ...], n: int = N, rate: float = RATE
) -> dict[str, Any]:
    result: dict[str, Any] = {"server": spec.name, "n": users, "rate": rate}
    if spec is not IM:
        modes = tuple(m for m in modes if m in PEER_MODES)
    async with running(spec) as server, aiohttp.ClientSession() as session:
        rx = Receivers(spec, server.port, users)
        await rx.start(session)
        try:
            await server.wait_count(users)
            for mode in modes:
                full = await run_mode(mode, server, rx, n, None)
                slow = await run_mode(mode, server, rx, int(rate * PACED_SECONDS), rate)
                result[f"uni_{mode}_per_s"] = full["per_s"]
                result[f"uni_{mode}_full_p99_ms"] = full["p99_ms"]
                result[f"uni_{mode}_server_busy"] = full["server_busy"]
                result[f"uni_{mode}_loadgen_busy"] = full["loadgen_busy"]
                result[f"uni_{mode}_p50_ms"] = slow["p50_ms"]
                result[f"uni_{mode}_p99_ms"] = slow["p99_ms"]
                half = round(full["per_s"] / 2, -2)
                if half < rate:  # the paced rate is near this mode's limit: also at half of it
                    slow = await run_mode(mode, server, rx, int(half * PACED_SECONDS), half)
                    result[f"uni_{mode}_half_rate"] = half
                    result[f"uni_{mode}_half_p99_ms"] = slow["p99_ms"]
        finally:
            await rx.close()
    return result
