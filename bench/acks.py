"""Ack round trip as a backend sees it, one push at a time to one connected client.

im: ``POST /api/v1/push_user`` with ``ack: true`` -> the client (``im_client`` with
``auto_ack``) acks -> the ``acked`` event arrives on ``GET /api/v1/ack_events``
(server-sent events). python-socketio: ``POST /push_ack`` -> the peer's
``sio.call(to=sid)`` (emit with a callback) -> the client's handler returns ->
the HTTP reply. Both: backend request sent -> backend knows the client acked.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from im_client import Client

from .servers import HOST, SOCKETIO, Running, Spec, b64, payload, running
from .unicast import HttpPool

ACKER = "bench-acker"
ACK_SERVERS = ("im", "socketio")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def ack_session(spec: Spec, k: int = 500) -> dict[str, Any]:
    async with running(spec) as server:
        if spec.im:
            ms = await _im(server, k)
        elif spec is SOCKETIO:
            ms = await _socketio(server, k)
        else:
            raise ValueError(f"{spec.name} has no acks")
    return {
        "server": spec.name,
        "n": 1,
        "ack_p50_ms": statistics.median(ms),
        "ack_p99_ms": percentile(ms, 0.99),
        "acks": len(ms),
    }


def _body(i: int, **extra: Any) -> bytes:
    return orjson.dumps({"user": ACKER, "data_b64": b64(payload(i, 64)), **extra})


async def _im(server: Running, k: int) -> list[float]:
    acker = Client(f"http://{HOST}:{server.port}/conn", ACKER, auto_ack=True)
    await acker.connect()
    drain = asyncio.ensure_future(_drain(acker))
    acked: dict[int, float] = {}
    event = asyncio.Event()
    events = await server.session.get(server.base + "ack_events")
    subscribed = asyncio.get_running_loop().create_future()

    def on_event(obj: dict[str, Any]) -> None:
        if obj.get("outcome") == "acked":
            acked[obj["sid"]] = time.perf_counter()
            event.set()

    reader = asyncio.ensure_future(read_ack_events(events, on_event, subscribed))
    pool = HttpPool(server.base, 1)  # aiohttp's client pool adds ms-long stalls to p99
    try:
        await server.wait_count(1)
        await asyncio.wait_for(subscribed, 10)
        times = []
        for i in range(k):
            t0 = time.perf_counter()
            sid = orjson.loads(await pool.post("push_user", _body(i, ack=True)))["sid"]
            async with asyncio.timeout(5):
                while sid not in acked:
                    event.clear()
                    await event.wait()
            times.append((acked.pop(sid) - t0) * 1000)
        return times
    finally:
        pool.close()
        reader.cancel()
        drain.cancel()
        events.close()
        await acker.close()


async def read_ack_events(
    response: aiohttp.ClientResponse,
    on_event: Callable[[dict[str, Any]], None],
    subscribed: asyncio.Future[None],
) -> None:
    """Read im's HTTP ack event stream: resolve ``subscribed`` at its ``: subscribed``
    line, hand each event's JSON (an outcome, or ``{"error": ...}``) to ``on_event``."""
    async for line in response.content:
        if line.startswith(b": subscribed") and not subscribed.done():
            subscribed.set_result(None)
        elif line.startswith(b"data: "):
            on_event(orjson.loads(line[6:]))


async def _drain(client: Client) -> None:
    while True:
        await client.receive()


async def _socketio(server: Running, k: int) -> list[float]:
    # Imported here: scenarios without the socket.io peer run without the bench extra.
    import socketio

    client = socketio.AsyncClient()

    @client.on("m")
    async def on_message(data: str) -> str:
        return "ok"  # returning a value is socket.io's ack

    await client.connect(f"http://{HOST}:{server.port}?user={ACKER}", transports=["websocket"])
    pool = HttpPool(server.base, 1)
    try:
        await server.wait_count(1)
        times = []
        for i in range(k):
            t0 = time.perf_counter()
            await pool.post("push_ack", _body(i))
            times.append((time.perf_counter() - t0) * 1000)
        return times
    finally:
        pool.close()
        await client.disconnect()
