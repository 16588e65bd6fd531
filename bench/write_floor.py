"""The floor under one broadcast: N bare uvloop transports, one frame written to each.

    python -m bench.write_floor [N]

A server with no im code upgrades N load-generator clients and then writes the same
100-byte frame to every transport in a loop, three times, timing ``transport.write``
and ``os.write`` on the raw descriptors. Compare with the latency scenario's
"queued -> all socket writes done": what im adds above this floor is its own cost.
``SHUFFLE=1`` writes in random order instead of accept order (hash-bucket order costs
~1.5-2 us more per socket: the kernel's per-socket work loses its locality).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import uvloop

from .servers import HOST, LOADGEN_CPU, ROOT, SERVER_CPU

FRAME = b"\x81\x62" + b"x" * 98
CLIENTS = """
import asyncio, os, sys, uvloop
from bench.loadgen import Pool
os.sched_setaffinity(0, {%d})
async def main(port, n):
    pool = Pool("127.0.0.1", port)
    await pool.open(["/"] * n)
    print(len(pool.clients), flush=True)
    await asyncio.sleep(120)
uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


class Upgrader(asyncio.Protocol):
    def __init__(self, transports: list[asyncio.Transport]) -> None:
        self.transports = transports

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transports.append(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")  # type: ignore[attr-defined]


async def main(n: int) -> None:
    os.sched_setaffinity(0, {SERVER_CPU})
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    srv = await loop.create_server(lambda: Upgrader(transports), HOST, 0, backlog=4096)
    port = srv.sockets[0].getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENTS % LOADGEN_CPU, str(port), str(n),
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    await proc.stdout.readline()
    await asyncio.sleep(1)
    if os.environ.get("SHUFFLE"):
        import random

        random.shuffle(transports)
    fds = [t.get_extra_info("socket").fileno() for t in transports]
    for _ in range(3):
        t0 = time.perf_counter()
        for t in transports:
            t.write(FRAME)
        t1 = time.perf_counter()
        await asyncio.sleep(0.5)
        for fd in fds:
            os.write(fd, FRAME)
        t2 = time.perf_counter()
        await asyncio.sleep(0.5)
        print(
            f"N={n}: transport.write {1e6 * (t1 - t0) / n:.2f} us/socket "
            f"({1e3 * (t1 - t0):.1f} ms), os.write {1e6 * (t2 - t1 - 0.5) / n:.2f} us/socket"
        )
    proc.kill()
    srv.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
