"""The floor under a unary gRPC call: grpcio servers with an empty ``Ping``, no im code.

    python -m bench.grpc_floor [CALLS]

Each server form runs in its own process pinned to the server CPU; this process
(pinned to the load-generator CPU) makes CALLS unary ``im.v1.Im/Ping`` calls, 32 in
flight on one ``grpc.aio`` channel, and prints calls/s and server CPU per call:

    aio            grpc.aio server, async handler, uvloop (what im runs)
    aio-asyncio    the same on the default asyncio loop
    aio-migrate    grpc.aio with ``migration_thread_pool``, a sync handler
    sync           grpc.server with a thread pool, sync handler
    sync-hop       sync, and the handler hops to an asyncio loop and back (what a
                   sync server would need to reach im's connections)

Compare with ``python -m bench unicast --servers im --modes grpc``: what im adds
above this floor is its own per-push cost.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import uvloop

from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

from .servers import HOST, LOADGEN_CPU, ROOT, SERVER_CPU, cpu_seconds, free_port

KINDS = ("aio", "aio-asyncio", "aio-migrate", "sync", "sync-hop")
IN_FLIGHT = 32


class AsyncPing(im_v1_pb2_grpc.ImServicer):
    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingReply:
        return pb.PingReply(node_id=1)


class SyncPing(im_v1_pb2_grpc.ImServicer):
    def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingReply:
        return pb.PingReply(node_id=1)


class HopPing(im_v1_pb2_grpc.ImServicer):
    """Each call runs a coroutine on an event loop thread and waits for it."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingReply:
        asyncio.run_coroutine_threadsafe(_nothing(), self.loop).result()
        return pb.PingReply(node_id=1)


async def _nothing() -> None:
    return None


def serve(kind: str, port: int) -> None:
    address = f"{HOST}:{port}"
    if kind in ("sync", "sync-hop"):
        server = grpc.server(futures.ThreadPoolExecutor(8))
        servicer = HopPing() if kind == "sync-hop" else SyncPing()
        im_v1_pb2_grpc.add_ImServicer_to_server(servicer, server)
        server.add_insecure_port(address)
        server.start()
        server.wait_for_termination()
        return

    async def main() -> None:
        if kind == "aio-migrate":
            aio = grpc.aio.server(migration_thread_pool=futures.ThreadPoolExecutor(8))
            im_v1_pb2_grpc.add_ImServicer_to_server(SyncPing(), aio)
        else:
            aio = grpc.aio.server()
            im_v1_pb2_grpc.add_ImServicer_to_server(AsyncPing(), aio)
        aio.add_insecure_port(address)
        await aio.start()
        await aio.wait_for_termination()

    (asyncio.run if kind == "aio-asyncio" else uvloop.run)(main())


async def _worker(stub: im_v1_pb2_grpc.ImStub, todo: Iterator[int]) -> None:
    for _ in todo:
        await stub.Ping(pb.PingRequest())


async def measure(kind: str, calls: int) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "bench.grpc_floor", "serve", kind, str(port)]
    proc = subprocess.Popen(  # noqa: ASYNC220 - started before timing
        ["taskset", "-c", str(SERVER_CPU), *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = im_v1_pb2_grpc.ImStub(channel)
            for n in (calls // 10, calls):  # warm-up, then timed
                todo = iter(range(n))
                cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                await asyncio.gather(*(_worker(stub, todo) for _ in range(IN_FLIGHT)))
                elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(10)
    return (
        f"{kind:<12} {n / elapsed:9,.0f} calls/s  server busy {cpu / elapsed:4.2f}  "
        f"{cpu / n * 1e6:4.0f} us of server CPU per call"
    )


async def main(calls: int) -> None:
    for kind in KINDS:
        print(await measure(kind, calls), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        os.sched_setaffinity(0, {LOADGEN_CPU})
        uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000))
