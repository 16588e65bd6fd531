"""A backend in its own process: ``M`` broadcast calls, each awaited before the next.

    python -m bench.caller grpc 127.0.0.1:50051 100 64   # im: im.basic.Basic/Broadcast
    python -m bench.caller grpc-sync 127.0.0.1:50051 100 64   # the same, a blocking stub
    python -m bench.caller http http://127.0.0.1:8080/ 100 64   # a peer: POST broadcast

Prints one JSON line: ``starts`` and ``ends`` of each call (``time.perf_counter``,
CLOCK_MONOTONIC, comparable with the harness's clock). Run apart from the load
generator so that measuring the deliveries does not slow the calls down.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time

from .servers import payload


async def grpc_calls(target: str, m: int, size: int) -> tuple[list[float], list[float]]:
    import grpc

    from im_plugins.pb import basic_pb2 as pb
    from im_plugins.pb import basic_pb2_grpc

    starts, ends = [], []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = basic_pb2_grpc.BasicStub(channel)
        await stub.Ping(pb.Empty())  # connected before the clock starts
        requests = [pb.BroadcastReq(data=payload(i, size)) for i in range(m)]
        for request in requests:
            starts.append(time.perf_counter())
            await stub.Broadcast(request)
            ends.append(time.perf_counter())
    return starts, ends


def grpc_sync_calls(target: str, m: int, size: int) -> tuple[list[float], list[float]]:
    """The same calls from a blocking stub: how a thread-per-request backend (and
    the original's Go clients) call, without an event loop around each call."""
    import grpc

    from im_plugins.pb import basic_pb2 as pb
    from im_plugins.pb import basic_pb2_grpc

    starts, ends = [], []
    with grpc.insecure_channel(target) as channel:
        stub = basic_pb2_grpc.BasicStub(channel)
        stub.Ping(pb.Empty())  # connected before the clock starts
        requests = [pb.BroadcastReq(data=payload(i, size)) for i in range(m)]
        for request in requests:
            starts.append(time.perf_counter())
            stub.Broadcast(request)
            ends.append(time.perf_counter())
    return starts, ends


async def http_calls(base: str, m: int, size: int) -> tuple[list[float], list[float]]:
    import aiohttp

    starts, ends = [], []
    bodies = [
        json.dumps({"data_b64": base64.b64encode(payload(i, size)).decode()}).encode()
        for i in range(m)
    ]
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "stats") as r:  # connected before the clock starts
            await r.read()
        for body in bodies:
            starts.append(time.perf_counter())
            async with session.post(base + "broadcast", data=body) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"broadcast: {r.status}")
            ends.append(time.perf_counter())
    return starts, ends


def main() -> int:
    kind, target, m, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if kind == "grpc-sync":
        starts, ends = grpc_sync_calls(target, m, size)
    else:
        calls = grpc_calls if kind == "grpc" else http_calls
        starts, ends = asyncio.run(calls(target, m, size))
    print(json.dumps({"starts": starts, "ends": ends}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
