"""One load-generator process of ``python -m bench c100k``.

It holds its share of the idle clients (one process may open at most ~20,000 files
here, so the 100,000 are spread over several), answers the server's pings, counts
whole data frames per client and says when every one of its clients got what a
broadcast should bring. Commands arrive on stdin, one JSON object per line; each is
answered by one JSON line on stdout:

    {"open": [port, first, count, concurrency]} -> {"opened", "failed", "seconds"}
    {"arm": messages}                           -> {"armed": true}
    {"wait": timeout}                           -> {"last", "finished", "counts"}
    {"stats": true}                             -> {"open", "pings", "closes"}

Times are ``time.perf_counter()``: CLOCK_MONOTONIC, the same clock in every process
of the machine, so the harness can compare them with its own.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import orjson

from .loadgen import ServerFrames, client_frame, close_code, source_addresses, upgrade_request

HOST = "127.0.0.1"


class Share:
    """This process's clients and what they got since the last ``arm``."""

    def __init__(self) -> None:
        self.clients: list[Idle] = []
        self.failed = 0
        self.expect = 1 << 62
        self.finished = 0
        self.last = 0.0
        self.pings = 0
        self.closes: dict[str, int] = {}
        self.all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def arm(self, messages: int) -> None:
        self.expect, self.finished, self.last = messages, 0, 0.0
        self.all_done = asyncio.get_running_loop().create_future()
        for c in self.clients:
            c.got = 0

    def ended(self, how: str) -> None:
        self.closes[how] = self.closes.get(how, 0) + 1


class Idle(asyncio.Protocol):
    """An idle client: upgrades, answers pings with pongs, counts whole messages."""

    __slots__ = ("buf", "frames", "got", "share", "transport", "upgraded")

    def __init__(self, share: Share, request: bytes, upgraded: asyncio.Future[bool]) -> None:
        self.share = share
        self.buf = request  # the upgrade request until sent, then the response head
        self.frames = ServerFrames()
        self.upgraded: asyncio.Future[bool] | None = upgraded  # None once upgraded
        self.got = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.buf)  # type: ignore[attr-defined]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        if self.upgraded is not None:
            buf = self.buf + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            ok = buf.startswith(b"HTTP/1.1 101")
            self.upgraded.set_result(ok)
            self.upgraded = None
            self.buf = b""
            data = buf[end + 4 :] if ok else b""
        share = self.share
        for opcode, payload in self.frames.feed(data):  # im sends whole messages
            if opcode == 0x9:  # a heartbeat ping: answer with its payload
                share.pings += 1
                self.transport.write(client_frame(0xA, payload))  # type: ignore[union-attr]
            elif opcode == 0x8:
                share.ended(f"close {close_code(payload)}")
            elif opcode in (0x1, 0x2):
                self.got += 1
                if self.got == share.expect:
                    share.finished += 1
                    share.last = time.perf_counter()
                    if share.finished == len(share.clients) and not share.all_done.done():
                        share.all_done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upgraded is not None:
            self.upgraded.set_result(False)
            self.upgraded = None
        else:
            self.share.ended("lost")


async def open_clients(share: Share, port: int, first: int, count: int, concurrency: int) -> dict:
    loop = asyncio.get_running_loop()
    sources = source_addresses()
    t0 = time.perf_counter()

    async def worker(ids: range) -> None:
        for i in ids:
            request = upgrade_request(HOST, port, f"/conn?token=u{i}")
            fut: asyncio.Future[bool] = loop.create_future()
            try:
                _, client = await loop.create_connection(
                    lambda r=request, f=fut: Idle(share, r, f),
                    HOST,
                    port,
                    local_addr=(next(sources), 0),
                )
            except OSError:
                share.failed += 1
                continue
            if await fut:
                share.clients.append(client)  # type: ignore[arg-type]
            else:
                share.failed += 1

    ids = range(first, first + count)
    await asyncio.gather(*(worker(ids[k::concurrency]) for k in range(concurrency)))
    return {
        "opened": len(share.clients),
        "failed": share.failed,
        "seconds": time.perf_counter() - t0,
    }


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    share = Share()
    while line := await reader.readline():
        command: dict[str, Any] = orjson.loads(line)
        if "open" in command:
            answer = await open_clients(share, *command["open"])
        elif "arm" in command:
            share.arm(command["arm"])
            answer = {"armed": True}
        elif "wait" in command:
            try:
                await asyncio.wait_for(asyncio.shield(share.all_done), command["wait"])
            except TimeoutError:
                pass
            await asyncio.sleep(0.3)  # extra frames, had there been any, show up here
            counts: dict[int, int] = {}
            for c in share.clients:
                counts[c.got] = counts.get(c.got, 0) + 1
            answer = {"last": share.last, "finished": share.finished, "counts": counts}
        else:
            answer = {"open": len(share.clients), "pings": share.pings, "closes": share.closes}
        sys.stdout.buffer.write(orjson.dumps(answer, option=orjson.OPT_NON_STR_KEYS) + b"\n")
        sys.stdout.flush()
    for c in share.clients:
        if c.transport is not None:
            c.transport.abort()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve())
