"""A request and its answer between two processes: through NATS (nats-py, the way
the NATS broker asks another node) against a Unix socket (the way workers' links
do), and the CPU each costs every process involved.

    python -m bench.roundtrip [--nats nats://127.0.0.1:4222] [--count 3000] [--rate 1000]

The answering process runs apart; the asking one sends ``count`` requests of 100
bytes, one at a time, ``1/rate`` s apart (a rate a worker sees, not a loop at full
speed), and reads /proc for its own CPU, the answerer's and nats-server's
(``--nats-pid``; found with pgrep when not given). Prints µs of CPU per round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from .servers import cpu_seconds

SUBJECT = "bench.roundtrip"
BODY = b"x" * 100


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class _Asker(asyncio.Protocol):
    waiter: asyncio.Future[bytes]

    def data_received(self, data: bytes) -> None:
        self.waiter.set_result(data)


async def answer(mode: str, where: str) -> None:
    if mode == "nats":
        import nats

        nc = await nats.connect(where)

        async def respond(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(msg.data)

        await nc.subscribe(SUBJECT, cb=respond)
        await nc.flush()
    else:
        await asyncio.get_running_loop().create_unix_server(_Echo, where)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def asker(mode: str, where: str) -> Callable[[], Awaitable[None]]:
    loop = asyncio.get_running_loop()
    if mode == "nats":
        import nats

        nc = await nats.connect(where)
        waiting: dict[str, asyncio.Future[None]] = {}
        inbox = "bench.roundtrip.reply."

        async def on_reply(msg: nats.aio.msg.Msg) -> None:
            waiting.pop(msg.subject[len(inbox) :]).set_result(None)

        await nc.subscribe(inbox + "*", cb=on_reply)
        await nc.flush()
        ids = iter(range(1 << 62))

        async def ask_nats() -> None:
            rid = str(next(ids))
            done = waiting[rid] = loop.create_future()
            await nc.publish(SUBJECT, BODY, reply=inbox + rid)
            await done

        return ask_nats
    transport, protocol = await loop.create_unix_connection(_Asker, where)

    async def ask_unix() -> None:
        protocol.waiter = loop.create_future()
        transport.write(BODY)
        await protocol.waiter

    return ask_unix


async def measure(mode: str, where: str, count: int, rate: float, others: list[int]) -> None:
    answerer = subprocess.Popen(  # noqa: ASYNC220 - before anything is timed
        [sys.executable, "-m", "bench.roundtrip", "--answer", mode, "--where", where],
        stdout=subprocess.PIPE,
    )
    try:
        assert answerer.stdout is not None
        await asyncio.to_thread(answerer.stdout.readline)  # "ready"
        ask = await asker(mode, where)
        for _ in range(200):  # warm up
            await ask()
        pids = [os.getpid(), answerer.pid, *others]
        before = [cpu_seconds(p) for p in pids]
        start = time.perf_counter()
        for _ in range(count):
            await ask()
            await asyncio.sleep(1 / rate)
        wall = time.perf_counter() - start
        per = [(cpu_seconds(p) - b) / count * 1e6 for p, b in zip(pids, before, strict=True)]
        parts = " + ".join(f"{v:.0f}" for v in per)
        names = "asking + answering" + (" + nats-server" if others else "")
        print(
            f"{mode:5} {sum(per):6.0f} µs CPU per round trip ({names}: {parts}), "
            f"{count} at {count / wall:,.0f}/s"
        )
    finally:
        answerer.kill()
        answerer.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--nats-pid", type=int, default=0)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--answer", choices=["nats", "unix"], help=argparse.SUPPRESS)
    parser.add_argument("--where", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.answer:
        uvloop.run(answer(args.answer, args.where))
        return
    pid = args.nats_pid
    if not pid:
        found = subprocess.run(["pgrep", "-o", "nats-server"], capture_output=True, text=True)
        pid = int(found.stdout.split()[0]) if found.stdout.strip() else 0
    with tempfile.TemporaryDirectory(prefix="im-rt-") as directory:
        sock = str(Path(directory) / "rt.sock")
        uvloop.run(measure("nats", args.nats, args.count, args.rate, [pid] if pid else []))
        uvloop.run(measure("unix", sock, args.count, args.rate, []))


if __name__ == "__main__":
    main()
