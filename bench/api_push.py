"""Unicast pushes per second through the push APIs, delivered to WebSocket clients.

Starts ``im-run`` on loopback (pinned to CPU 0 with ``taskset`` when available;
this process pins itself to CPU 1), connects USERS clients, then pushes N
messages, each to one user chosen round-robin, and stops the clock when every
client has received its share. Run by hand, not in the tests:

    python bench/api_push.py                       # every mode, N = 20000
    python bench/api_push.py --mode grpc --n 50000 --concurrency 64
    python bench/api_push.py --mode http --rate 5000   # latency at a fixed rate

Modes: ``grpc`` (unary PushUser, CONCURRENCY calls in flight), ``grpc-stream``
(PushStream, one call, batches of BATCH), ``http`` (POST /api/v1/push_user,
CONCURRENCY requests in flight over as many keep-alive connections, raw HTTP/1.1),
``http-stream`` (POST /api/v1/push_stream, an NDJSON body). With ``--rate`` pushes
are paced and the push -> client latency is reported (p50 / p99; sender and
receivers share this process's clock).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.parse

import aiohttp
import grpc
import orjson

from im_plugins.json_codec import JsonCodec
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

MODES = ("grpc", "grpc-stream", "http", "http-stream")
CODEC = JsonCodec()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(http_port: int, rpc_port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "im_core.cli",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--rpc-port",
        str(rpc_port),
        "--log-level",
        "WARNING",
    ]
    if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1:
        cmd = ["taskset", "-c", "0", *cmd]
        os.sched_setaffinity(0, {1})
    return subprocess.Popen(cmd)


async def wait_up(http_port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"http://127.0.0.1:{http_port}/ping"):
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise SystemExit("server did not start")


class Receivers:
    """USERS WebSocket clients that count frames and record latencies."""

    def __init__(self, http_port: int, users: int) -> None:
        self.url = f"http://127.0.0.1:{http_port}/conn"
        self.users = [f"u{i}" for i in range(users)]
        self.received = 0
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.expected = 0

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.sockets = [await session.ws_connect(self.url, params={"token": u}) for u in self.users]
        self.tasks = [asyncio.ensure_future(self._read(ws)) for ws in self.sockets]

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            data = msg.data.encode() if isinstance(msg.data, str) else msg.data
            _, payload = CODEC.decode_push(data)
            self.latencies.append(time.perf_counter() - struct.unpack("d", payload[:8])[0])
            self.received += 1
            if self.received >= self.expected:
                self.done.set()

    def expect(self, n: int) -> None:
        self.received, self.latencies, self.expected = 0, [], n
        self.done.clear()

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()


def payload() -> bytes:
    return struct.pack("d", time.perf_counter()) + b"x" * 56  # 64 bytes


async def paced(n: int, rate: float | None, concurrency: int, push) -> None:
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), to tell who is the bottleneck."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class HttpPool:
    """A lean HTTP/1.1 client: CONCURRENCY keep-alive connections, one request on
    each at a time. aiohttp's client costs the load generator more CPU than the
    server spends per request, and its pool added stalls of 35-140 ms to p99."""

    def __init__(self, base: str, size: int) -> None:
        url = urllib.parse.urlsplit(base)
        self.host, self.port, self.path = url.hostname, url.port, url.path
        self.size = size
        self.free: asyncio.Queue | None = None

    async def post(self, path: str, body: bytes) -> bytes:
        if self.free is None:
            self.free = asyncio.Queue()
            for _ in range(self.size):
                self.free.put_nowait(await asyncio.open_connection(self.host, self.port))
        reader, writer = await self.free.get()
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: im\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % ((self.path + path).encode(), len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        reply = await reader.readexactly(length)
        self.free.put_nowait((reader, writer))
        if status != 200:
            raise SystemExit(reply.decode())
        return reply

    def close(self) -> None:
        while self.free is not None and not self.free.empty():
            self.free.get_nowait()[1].close()


def make_sender(mode: str, args, users: list[str], grpc_stub, session, base: str):
    """``send(n)``: push n messages the way ``mode`` does."""

    def user(i: int) -> str:
        return users[i % len(users)]

    if mode == "grpc":

        async def push(i: int) -> None:
            await grpc_stub.PushUser(pb.PushUserRequest(user=user(i), data=payload()))

        return lambda n: paced(n, args.rate, args.concurrency, push)

    if mode == "http":
        pool = HttpPool(base, args.concurrency)

        async def push(i: int) -> None:
            body = {"user": user(i), "data_b64": base64.b64encode(payload()).decode()}
            await pool.post("/push_user", orjson.dumps(body))

        return lambda n: paced(n, args.rate, args.concurrency, push)

    async def batches(n: int):
        for start in range(0, n, args.batch):
            size = min(n, start + args.batch) - start
            yield start, size
            if args.rate:
                await asyncio.sleep(size / args.rate)

    if mode == "grpc-stream":

        async def requests(n: int):
            async for start, size in batches(n):
                pushes = [
                    pb.StreamPush(users=[user(i)], data=payload())
                    for i in range(start, start + size)
                ]
                yield pb.PushBatch(pushes=pushes)

        async def stream(n: int) -> None:
            async for result in grpc_stub.PushStream(requests(n)):
                raise SystemExit(f"unexpected result: {result}")

        return stream

    async def body(n: int):
        async for start, size in batches(n):
            yield b"".join(
                b'{"users":["%s"],"data_b64":"%s"}\n'
                % (user(i).encode(), base64.b64encode(payload()))
                for i in range(start, start + size)
            )

    async def post(n: int) -> None:
        async with session.post(base + "/push_stream", data=body(n)) as r:
            reply = await r.json()
            if reply["processed"] != n or reply["results"]:
                raise SystemExit(f"unexpected reply: {str(reply)[:200]}")

    return post


async def run_mode(mode: str, args, rx: Receivers, http_port: int, rpc_port: int) -> None:
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{rpc_port}") as channel,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        base = f"http://127.0.0.1:{http_port}/api/v1"
        send = make_sender(mode, args, rx.users, im_v1_pb2_grpc.ImStub(channel), session, base)
        for n in (args.warmup, args.n):
            rx.expect(n)
            cpu0, t0 = cpu_seconds(args.server_pid), time.perf_counter()
            own0 = time.process_time()
            await send(n)
            await asyncio.wait_for(rx.done.wait(), 60)
            elapsed = time.perf_counter() - t0
    server_cpu = (cpu_seconds(args.server_pid) - cpu0) / elapsed
    own_cpu = (time.process_time() - own0) / elapsed
    lat = sorted(rx.latencies)
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
    print(
        f"{mode:<12} {n:>7} pushes  {n / elapsed:>9,.0f} pushes/s  "
        f"push->client p50 {p50:6.2f} ms  p99 {p99:7.2f} ms  "
        f"CPU: server {server_cpu:4.0%}, load generator {own_cpu:4.0%}"
        + (f"  (paced at {args.rate:,.0f}/s)" if args.rate else "")
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, action="append")
    parser.add_argument("--n", type=int, default=20000, help="pushes per mode")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=1000, help="untimed pushes first")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=100, help="pushes per stream message")
    parser.add_argument("--rate", type=float, default=None, help="pace pushes (per second)")
    args = parser.parse_args()
    http_port, rpc_port = free_port(), free_port()
    server = start_server(http_port, rpc_port)
    args.server_pid = server.pid
    try:
        await wait_up(http_port)
        async with aiohttp.ClientSession() as session:
            rx = Receivers(http_port, args.users)
            await rx.start(session)
            for mode in args.mode or MODES:
                await run_mode(mode, args, rx, http_port, rpc_port)
            await rx.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
