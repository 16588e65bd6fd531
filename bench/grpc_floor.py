"""The floor under a unary gRPC call: grpcio servers with an empty ``Ping``, no im code.

    python -m bench.grpc_floor [CALLS]

Each server form runs in its own process pinned to the server CPU; this process
(pinned to the load-generator CPU) makes CALLS unary ``im.v1.Im/Ping`` calls, 32 in
flight on one ``grpc.aio`` channel, and prints calls/s and server CPU per call:

    aio            grpc.aio server, async handler, uvloop (what im runs)
    aio-yield      the same, the handler yields to the loop once before it answers
                   (as one that waits for another worker's answer must)
    aio-x2         two ``aio`` servers on one port (SO_REUSEPORT, as ``--workers 2``),
                   unpinned, the calls over 8 channels: CPU per call of both
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

KINDS = ("aio", "aio-yield", "aio-x2", "aio-asyncio", "aio-migrate", "sync", "sync-hop")
IN_FLIGHT = 32


class AsyncPing(im_v1_pb2_grpc.ImServicer):
    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingReply:
        return pb.PingReply(node_id=1)


class YieldingPing(im_v1_pb2_grpc.ImServicer):
    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingReply:
        await asyncio.sleep(0)
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
            servicer = YieldingPing() if kind == "aio-yield" else AsyncPing()
            im_v1_pb2_grpc.add_ImServicer_to_server(servicer, aio)
        aio.add_insecure_port(address)
        await aio.start()
        await aio.wait_for_termination()

    (asyncio.run if kind == "aio-asyncio" else uvloop.run)(main())


async def _worker(stub: im_v1_pb2_grpc.ImStub, todo: Iterator[int]) -> None:
    for _ in todo:
        await stub.Ping(pb.PingRequest())


async def measure(kind: str, calls: int) -> str:
    port = free_port()
    serving = "aio" if kind == "aio-x2" else kind
    argv = [sys.executable, "-m", "bench.grpc_floor", "serve", serving, str(port)]
    # aio-x2: both servers on every core, as the workers of ``im-run --workers 2``
    cpus = f"0-{(os.cpu_count() or 1) - 1}" if kind == "aio-x2" else str(SERVER_CPU)
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started before timing
            ["taskset", "-c", cpus, *argv],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(2 if kind == "aio-x2" else 1)
    ]
    # Several channels, each its own connection (so with two servers, both get some).
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(f"{HOST}:{port}", options=options)
        for _ in range(8 if kind == "aio-x2" else 1)
    ]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        stubs = [im_v1_pb2_grpc.ImStub(channel) for channel in channels]
        for n in (calls // 10, calls):  # warm-up, then timed
            todo = iter(range(n))
            cpu0, t0 = sum(cpu_seconds(p.pid) for p in procs), time.perf_counter()
            await asyncio.gather(
                *(_worker(stubs[i % len(stubs)], todo) for i in range(IN_FLIGHT))
            )
            elapsed = time.perf_counter() - t0
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
    finally:
        for channel in channels:
            await channel.close()
        for proc in procs:
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
