"""Abusive WebSocket clients for ``python -m bench abuse``, one kind per process.

    python -m bench.attackers KIND --port P --seconds S --clients N

The harness starts this niced on the load generator's core, so a flood takes what
CPU the bystander's process leaves and does not delay the bystander's own timing.
It prints ``start`` when the abuse begins and, after ``--seconds``, one JSON line:
what happened to each socket (``close CODE`` from the server's close frame, ``http
STATUS``, ``eof``, ``reset``, still ``open``) and what was sent. Every socket ends
with an RST (SO_LINGER 0): the server drops what it has not read yet.

Kinds:
    fragment  - N upgraded clients, each one message of endless 1-byte and empty
                continuation fragments (never the final one)
    slowloris - N sockets: half drip the upgrade request 1 byte/s, half send nothing
    frames    - N upgraded clients sending pings and 10-byte binary frames flat out
    churn     - N tasks: connect, upgrade, close frame, wait for the server's close
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import struct
import sys
import time
from collections import Counter
from typing import Any

import orjson

from .loadgen import WsClient, client_frame, source_addresses, upgrade_request

HOST = "127.0.0.1"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0x0, 0x1, 0x2, 0x8, 0x9
CHUNK = 64 << 10  # bytes of frames handed to the socket per write
UPGRADE_TIMEOUT = 5.0
LINGER_RST = struct.pack("ii", 1, 0)
KINDS = ("fragment", "slowloris", "frames", "churn")


class Attacker(WsClient):
    """One abusive socket: RST on close, and write flow control for floods."""

    def __init__(self, request: bytes = b"") -> None:
        super().__init__(request)
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.writable.set()  # wake a writer waiting on flow control

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class Attack:
    """Every socket of one attack, and the report built from them."""

    def __init__(self, port: int, seconds: float) -> None:
        self.port = port
        self.seconds = seconds
        self.sources = source_addresses()
        self.sockets: list[Attacker] = []
        self.tally: Counter[str] = Counter()  # outcomes of sockets already let go
        self.failed = 0
        self.sent = 0
        self.deadline = 0.0
        self.extra: dict[str, Any] = {}

    async def connect(self, request: bytes = b"") -> Attacker | None:
        loop = asyncio.get_running_loop()
        try:
            _, att = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Attacker(request), HOST, self.port, local_addr=(next(self.sources), 0)
                ),
                UPGRADE_TIMEOUT,
            )
        except (OSError, TimeoutError):
            self.failed += 1
            return None
        self.sockets.append(att)
        return att

    async def upgraded(self, user: str) -> Attacker | None:
        """A socket that sent an upgrade request and got an answer (or none in time)."""
        att = await self.connect(upgrade_request(HOST, self.port, f"/conn?token={user}"))
        if att is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(att.upgraded), UPGRADE_TIMEOUT)
        return att

    async def upgraded_clients(self, prefix: str, n: int) -> list[Attacker]:
        socks = [await self.upgraded(f"{prefix}{i}") for i in range(n)]
        return [s for s in socks if s is not None and s.is_upgraded]

    async def flood(self, att: Attacker, chunk: bytes) -> None:
        """Write ``chunk`` as fast as the socket takes it, until the deadline or its end."""
        assert att.transport is not None
        while att.open and (left := self.deadline - time.monotonic()) > 0:
            if not att.writable.is_set():
                try:
                    await asyncio.wait_for(att.writable.wait(), left)
                except TimeoutError:
                    break
                continue
            att.transport.write(chunk)
            self.sent += len(chunk)
            await asyncio.sleep(0)  # let reads (close frames) in

    def begin(self) -> None:
        self.deadline = time.monotonic() + self.seconds
        print("start", flush=True)

    async def until_deadline(self) -> None:
        await asyncio.sleep(max(0.0, self.deadline - time.monotonic()))

    def report(self, kind: str) -> dict[str, Any]:
        outcomes = self.tally + Counter(s.outcome or "open" for s in self.sockets)
        if self.failed:
            outcomes["connect failed"] += self.failed
        lifetimes = [s.ended - s.opened for s in self.sockets if s.outcome]
        for s in self.sockets:
            s.abort()
        return {
            "kind": kind,
            "sockets": len(self.sockets) + sum(self.tally.values()) + self.failed,
            "outcomes": dict(outcomes.most_common()),
            "closed_after_s": round(statistics.median(lifetimes), 2) if lifetimes else None,
            "sent_bytes": self.sent,
            **self.extra,
        }


def repeat(frames: bytes) -> bytes:
    return frames * max(1, CHUNK // len(frames))


async def fragment(attack: Attack, clients: int) -> None:
    socks = await attack.upgraded_clients("frag", clients)
    pair = client_frame(OP_CONT, b"x", fin=False) + client_frame(OP_CONT, b"", fin=False)
    chunk = repeat(pair)
    attack.begin()
    for s in socks:
        assert s.transport is not None
        s.transport.write(client_frame(OP_TEXT, b"x", fin=False))  # the message that never ends
    await asyncio.gather(*(attack.flood(s, chunk) for s in socks))
    attack.extra["frames_sent"] = attack.sent // len(pair) * 2
    await attack.until_deadline()


async def frames(attack: Attack, clients: int) -> None:
    socks = await attack.upgraded_clients("flood", clients)
    pair = client_frame(OP_PING, b"p") + client_frame(OP_BINARY, b"0123456789")
    chunk = repeat(pair)
    attack.begin()
    await asyncio.gather(*(attack.flood(s, chunk) for s in socks))
    attack.extra["frames_sent"] = attack.sent // len(pair) * 2
    await attack.until_deadline()


async def slowloris(attack: Attack, clients: int) -> None:
    request = upgrade_request(HOST, attack.port, "/conn?token=slow")
    drip = [s for s in [await attack.connect() for _ in range(clients // 2)] if s]
    mute = [s for s in [await attack.connect() for _ in range(clients - clients // 2)] if s]
    attack.begin()
    for i in range(len(request)):  # one byte a second, to every dripping socket still open
        for s in drip:
            if s.open and s.transport is not None:
                s.transport.write(request[i : i + 1])
                attack.sent += 1
        if time.monotonic() + 1.0 > attack.deadline:
            break
        await asyncio.sleep(1.0)
    await attack.until_deadline()
    attack.extra["groups"] = {
        "drip": dict(Counter(s.outcome or "open" for s in drip)),
        "mute": dict(Counter(s.outcome or "open" for s in mute)),
    }


async def churn(attack: Attack, tasks: int) -> None:
    close = client_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
    upgrades = 0

    async def worker(w: int) -> None:
        nonlocal upgrades
        for n in range(1 << 30):  # bounded by the deadline, checked first
            if time.monotonic() >= attack.deadline:
                return
            att = await attack.upgraded(f"churn{w}-{n}")
            if att is None:
                continue
            if att.is_upgraded and att.transport is not None:
                upgrades += 1
                att.transport.write(close)
                with contextlib.suppress(TimeoutError):  # the server answers and hangs up
                    await asyncio.wait_for(asyncio.shield(att.done), 2.0)
            attack.tally[att.outcome or "open"] += 1
            att.abort()
            attack.sockets.remove(att)  # keep only what is in flight

    attack.begin()
    t0 = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(tasks)))
    attack.extra["upgrades"] = upgrades
    attack.extra["connects_per_s"] = round(upgrades / (time.monotonic() - t0), 1)


RUN = {"fragment": fragment, "slowloris": slowloris, "frames": frames, "churn": churn}


async def main(kind: str, port: int, seconds: float, clients: int) -> None:
    attack = Attack(port, seconds)
    try:
        await RUN[kind](attack, clients)
    finally:
        print(orjson.dumps(attack.report(kind)).decode(), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.attackers")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    a = parser.parse_args()
    import uvloop

    uvloop.run(main(a.kind, a.port, a.seconds, a.clients))
    sys.exit(0)
