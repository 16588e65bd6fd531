"""Ack round trip: push with ack -> client acks -> ``im_acked`` hook.

One push at a time to one connected client (``im_client`` with ``auto_ack``), timed
inside the server by ``bench.trigger_plugin`` from the push call to the hook. im
only: the peers have no acks.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from im_client import Client

from .servers import HOST, IM, running


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def ack_session(k: int = 500) -> dict[str, Any]:
    async with running(IM) as server:
        acker = Client(f"http://{HOST}:{server.port}/conn", "bench-acker", auto_ack=True)
        await acker.connect()
        reader = asyncio.ensure_future(_drain(acker))
        try:
            await server.wait_count(1)
            reply = await server.command(f"ackrtt {k} 64", "ackrtt")
            if not reply.startswith("#ackrtt"):
                raise RuntimeError(reply)
            ms = [float(v) for v in reply.split()[1:]]
        finally:
            reader.cancel()
            await acker.close()
    return {
        "server": "im",
        "n": 1,
        "ack_p50_ms": statistics.median(ms),
        "ack_p99_ms": percentile(ms, 0.99),
        "acks": len(ms),
    }


async def _drain(client: Client) -> None:
    while True:
        await client.receive()
