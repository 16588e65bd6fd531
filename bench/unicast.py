"""Unicast: pushes to one user each, through the push APIs, to WebSocket clients.

USERS clients connect; the harness pushes N messages, each to one user chosen
round-robin, and stops the clock when every client has received its share. Each
mode runs at full rate (CONCURRENCY calls in flight) for pushes/s, then paced at
RATE pushes/s (and at half its own full rate when that is lower) for the push ->
client latency (p50 / p99; sender and receivers share this process's clock: the
payload carries the send time).

Modes: ``grpc`` (im: unary ``im.v1.Im/PushUser`` over ``--channels`` channels,
each its own TCP connection, calls round-robin over them), ``http`` (``POST push_user``,
CONCURRENCY keep-alive connections; im's ``/api/v1/push_user`` and the same route
on each peer), and for im only ``grpc-stream`` (``PushStream``, batches of BATCH)
and ``http-stream`` (``POST /api/v1/push_stream``, one NDJSON body).

    python -m bench unicast --runs 3                 # im gRPC + HTTP, peers HTTP
    python -m bench unicast --servers im --modes grpc,http,grpc-stream,http-stream
    python -m bench unicast --servers im-w1,im-w2 --channels 8   # workers share the calls
"""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import orjson

from im_plugins.json_codec import JsonCodec
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

from .servers import HOST, SOCKETIO, Running, Spec, running

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
#: push fields a unicast run can set (``--push-flags``)
FLAGS = ("ack", "store")
CODEC = JsonCodec()
Send = Callable[[int], Awaitable[None]]


class Channels:
    """``count`` gRPC channels to one target, each its own TCP connection (a local
    subchannel pool: by default grpc shares one connection among channels with the
    same arguments), so that ``SO_REUSEPORT`` spreads them over the workers. Unary
    calls go round-robin over them; a stream uses the first."""

    def __init__(self, target: str, count: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(count)]
        self.stubs = [im_v1_pb2_grpc.ImStub(c) for c in self.channels]
        self.next = 0

    def PushUser(self, request: pb.PushUserRequest) -> Any:
        self.next = (self.next + 1) % len(self.stubs)
        return self.stubs[self.next].PushUser(request)

    def PushStream(self, requests: Any) -> Any:
        return self.stubs[0].PushStream(requests)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def stamp() -> bytes:
    """64 ASCII bytes starting with the send time (socket.io events must be text)."""
    return b"%020.9f" % time.perf_counter() + b"x" * 44


def sent_at(payload: bytes) -> float:
    return float(payload[:20])


class Receivers:
    """USERS WebSocket clients that count frames and record push -> client latency.

    A push that carries a sid (``ack`` or ``store``) is acked at once, as the
    protocol asks (docs/protocol.md, "Ack flow"): unacked it would be re-sent and its
    kept copy would stay in the broker. A sid seen twice is a re-send: counted in
    ``resent``, not as a delivery."""

    def __init__(self, spec: Spec, port: int, users: int) -> None:
        self.spec = spec
        self.urls = [f"http://{HOST}:{port}{spec.client_path(i)}" for i in range(users)]
        self.users = [f"u{i}" for i in range(users)]
        self.received = 0
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.expected = 0
        self.sids: set[int] = set()  # over the whole session: sids are unique per server
        self.resent = 0

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.sockets = [await session.ws_connect(url) for url in self.urls]
        if self.spec is SOCKETIO:  # Engine.IO open packet, then join the default namespace
            for ws in self.sockets:
                await ws.receive()
                await ws.send_str("40")
                await ws.receive()
        self.tasks = [asyncio.ensure_future(self._read(ws)) for ws in self.sockets]

    def _frame(self, data: str | bytes) -> tuple[int, bytes | None]:
        """(sid, payload) of a frame; payload None for a frame that is no push."""
        if self.spec.im:
            return CODEC.decode_push(data.encode() if isinstance(data, str) else data)
        if self.spec is SOCKETIO:  # 42["m","<text>"]
            text = data if isinstance(data, str) else data.decode()
            return 0, orjson.loads(text[2:])[1].encode() if text.startswith("42") else None
        return 0, data if isinstance(data, bytes) else data.encode()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            sid, payload = self._frame(msg.data)
            if payload is None:
                continue
            if sid:
                await ws.send_str(CODEC.encode_client(acks=(sid,)).decode())
                if sid in self.sids:
                    self.resent += 1
                    continue
                self.sids.add(sid)
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


@dataclass
class Tally:
    """What the push API answered over one phase, checked after it."""

    sids: int = 0  # pushes answered with a sid (ack or store asked)
    stored: int = 0  # users reported offline and kept for (store)
    missing: int = 0  # users reported not reached

    def add(self, sid: int, missing: Sequence[str] = (), stored: Sequence[str] = ()) -> None:
        self.sids += sid != 0
        self.missing += len(missing)
        self.stored += len(stored)


def parse_flags(text: str) -> dict[str, bool]:
    """``"ack,store"`` -> the push fields to set (``""`` / ``"none"``: none)."""
    names = [f for f in text.replace("+", ",").split(",") if f and f != "none"]
    if unknown := set(names) - set(FLAGS):
        raise ValueError(f"unknown push flags {sorted(unknown)} (known: {FLAGS})")
    return dict.fromkeys(names, True)


def make_sender(
    mode: str,
    server: Running,
    users: list[str],
    rate: float | None,
    stub: Any,
    pool: HttpPool,
    flags: Mapping[str, bool] | None = None,
    tally: Tally | None = None,
) -> Send:
    """``send(n)``: push n messages the way ``mode`` does, each with ``flags`` (the
    ``ack`` / ``store`` fields, set only when true: an unset ``store`` is the
    server's default, and a request without them is what an older server knows);
    the answers are summed in ``tally``."""
    flags = dict(flags or {})
    tally = tally if tally is not None else Tally()
    # protobuf: an unset field is what a request without the flag sends (None: unset)
    ack, store = flags.get("ack", False), flags.get("store") or None

    def user(i: int) -> str:
        return users[i % len(users)]

    if mode == "grpc":

        async def push_grpc(i: int) -> None:
            r = await stub.PushUser(
                pb.PushUserRequest(user=user(i), data=stamp(), ack=ack, store=store)
            )
            tally.add(r.sid, (), r.stored)

        return lambda n: paced(n, rate, CONCURRENCY, push_grpc)

    if mode == "http":

        async def push_http(i: int) -> None:
            body = {"user": user(i), "data_b64": base64.b64encode(stamp()).decode(), **flags}
            reply = await pool.post("push_user", orjson.dumps(body))
            if flags:  # the reply of a plain push says nothing new: not parsed
                r = orjson.loads(reply)
                tally.add(r["sid"], (), r.get("stored", ()))

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
                    pb.StreamPush(users=[user(i)], data=stamp(), ack=ack, store=store)
                    for i in range(start, start + size)
                ]
                yield pb.PushBatch(pushes=pushes)

        async def stream(n: int) -> None:
            # A result comes back only for a push with news: a sid, or a user not reached.
            async for result in stub.PushStream(requests(n)):
                if result.HasField("error"):
                    raise RuntimeError(f"unexpected result: {result}")
                tally.add(result.sid, result.missing, result.stored)

        return stream

    if mode != "http-stream":
        raise ValueError(f"unknown mode {mode!r}")

    extra = b"".join(b',"%s":true' % f.encode() for f in flags)
    LINE = b'{"users":["%s"],"data_b64":"%s"' + extra + b"}\n"

    async def body(n: int) -> AsyncIterator[bytes]:
        async for start, size in batches(n):
            yield b"".join(
                LINE % (user(i).encode(), base64.b64encode(stamp()))
                for i in range(start, start + size)
            )

    async def post(n: int) -> None:
        async with server.session.post(server.base + "push_stream", data=body(n)) as r:
            reply = await r.json()
            if reply["processed"] != n:
                raise RuntimeError(f"unexpected reply: {str(reply)[:200]}")
            for result in reply["results"]:
                if "error" in result:
                    raise RuntimeError(f"unexpected result: {result}")
                tally.add(result.get("sid", 0), result.get("missing", ()), result.get("stored", ()))

    return post


def check(tally: Tally, n: int, flags: Mapping[str, bool], offline: bool = False) -> None:
    """Every push answered as asked: a sid each when flagged, nobody missing, and
    kept for the (offline) user exactly when ``offline``."""
    want = Tally(n if flags else 0, n if offline else 0, 0)
    if tally != want:
        raise RuntimeError(f"push answers {tally}, expected {want}")


async def run_mode(
    mode: str,
    server: Running,
    rx: Receivers,
    n: int,
    rate: float | None,
    flags: Mapping[str, bool] | None = None,
    channels: int = 1,
) -> dict[str, float]:
    """Push ``n`` (after WARMUP untimed) in ``mode`` with ``flags``; rate, latency,
    who was busy and the server's CPU per push."""
    flags = dict(flags or {})
    pool = HttpPool(server.base, CONCURRENCY)
    stub = Channels(f"{HOST}:{server.rpc_port}", channels)
    try:
        for count in (WARMUP, n):
            tally = Tally()
            send = make_sender(mode, server, rx.users, rate, stub, pool, flags, tally)
            rx.expect(count)
            cpu0, t0, own0 = server.cpu_seconds(), time.perf_counter(), time.process_time()
            await send(count)
            await asyncio.wait_for(rx.done.wait(), 60)
            elapsed = time.perf_counter() - t0
            check(tally, count, flags)
    finally:
        pool.close()
        await stub.close()
    cpu = server.cpu_seconds() - cpu0
    lat = sorted(rx.latencies)
    return {
        "per_s": n / elapsed,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "server_busy": round(cpu / elapsed, 2),
        "loadgen_busy": round((time.process_time() - own0) / elapsed, 2),
        # the server's own cost, whichever side was the bound
        "server_us": cpu / n * 1e6,
    }


async def measure_mode(
    mode: str,
    server: Running,
    rx: Receivers,
    n: int,
    rate: float,
    flags: Mapping[str, bool] | None = None,
    channels: int = 1,
) -> dict[str, Any]:
    """One mode's row: full rate, paced at ``rate``, and at half its own rate when
    that is lower (the paced rate is near this mode's limit)."""
    full = await run_mode(mode, server, rx, n, None, flags, channels)
    row: dict[str, Any] = {
        "per_s": full["per_s"],
        "full_p99_ms": full["p99_ms"],
        "server_busy": full["server_busy"],
        "loadgen_busy": full["loadgen_busy"],
        "server_us": full["server_us"],
    }
    half = round(full["per_s"] / 2, -2)
    # A paced phase above what the server sustains can end in unary calls failing
    # (CANCELLED, see docs/performance.md "Not done yet"): recorded, and the full-rate
    # figures above are kept.
    try:
        slow = await run_mode(mode, server, rx, int(rate * PACED_SECONDS), rate, flags, channels)
        row["p50_ms"], row["p99_ms"] = slow["p50_ms"], slow["p99_ms"]
        # At one rate for every server: per-call CPU at full rate also carries how
        # busy the server was (fewer calls per wake-up when it waits on something).
        row["paced_server_us"] = slow["server_us"]
    except Exception as exc:
        row["paced_error"] = f"{type(exc).__name__} at {rate:.0f}/s"
        await asyncio.sleep(1.0)  # let the calls still queued drain
    if half < rate:
        row["half_rate"] = half
        try:
            slow = await run_mode(
                mode, server, rx, int(half * PACED_SECONDS), half, flags, channels
            )
            row["half_p50_ms"], row["half_p99_ms"] = slow["p50_ms"], slow["p99_ms"]
        except Exception as exc:
            row["half_error"] = f"{type(exc).__name__} at {half:.0f}/s"
            await asyncio.sleep(1.0)
    return row


async def unicast_session(
    spec: Spec,
    users: int,
    modes: tuple[str, ...],
    n: int = N,
    rate: float = RATE,
    extra_args: Sequence[str] = (),
    flags: Mapping[str, bool] | None = None,
    channels: int = 1,
) -> dict[str, Any]:
    result: dict[str, Any] = {"server": spec.name, "n": users, "rate": rate}
    if not spec.im:  # the peers know neither im's flags nor its options
        modes, extra_args, flags = tuple(m for m in modes if m in PEER_MODES), (), None
    async with running(spec, extra_args=extra_args) as server, aiohttp.ClientSession() as session:
        rx = Receivers(spec, server.port, users)
        await rx.start(session)
        try:
            await server.wait_count(users)
            for mode in modes:
                row = await measure_mode(mode, server, rx, n, rate, flags, channels)
                result.update({f"uni_{mode}_{k}": v for k, v in row.items()})
        finally:
            await rx.close()
    if rx.resent:
        result["resent"] = rx.resent
    return result
