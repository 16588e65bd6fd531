"""Cluster benchmark (run by hand): cross-node push latency and broadcast
deliveries/s, 2 nodes over a broker against 1 node.

    python bench/cluster.py [--broker redis|nats] [--clients 2000] [--messages 100]
                            [--pushes 2000] [--server-cpu 0] [--client-cpu 1]

Latency: this process runs node A (same broker, same prefix) and one client; node B
is an ``im-run`` process. A pushes to the client one message at a time, 64 bytes;
latency = push call -> frame decoded by the client. "1 node": the client is on A
itself (local delivery); "2 nodes": the client is on B (A -> broker -> B -> client).

Broadcast: N raw-socket clients (the handshake by hand, then only bytes counted)
spread over the ``im-run`` nodes; a trigger client asks the first node (through
this module's ``im_receive`` hook, loaded with ``--plugin bench.cluster``) to
broadcast M messages of 64 bytes; deliveries/s = N x M / (trigger sent -> last byte
at the last client). "1 node": one node with the memory broker; "2 nodes": two
nodes over the broker, N/2 clients each, both pinned to the server CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from im_core import hookimpl

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"x" * 64


# --- the trigger plugin, loaded into the im-run nodes ------------------------------


@hookimpl
def im_receive(server: Any, data: bytes) -> None:
    if data.startswith(b"bench:broadcast:"):
        for _ in range(int(data.rsplit(b":", 1)[1])):
            server.broadcast(PAYLOAD)


# --- processes -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, broker_args: list[str], cpu: int | None) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "im_core.cli", "--host", "127.0.0.1", "--log-level", "WARNING"]
        cmd += ["--http-port", str(self.port), "--rpc-port", str(free_port())]
        cmd += ["--plugin", "bench.cluster", "--broadcast-buffer", "1000", *broker_args]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "IM_DISABLE_PLUGIN_AUTOLOAD": "1"}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env)

    async def ready(self) -> None:
        for _ in range(300):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("node did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- raw-socket clients: count bytes only ------------------------------------------


class Counter(asyncio.Protocol):
    def __init__(self, path: bytes, done: asyncio.Future[None]) -> None:
        self.path = path
        self.buf = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.received = 0
        self.expected = -1
        self.frame_len = 0
        self.done = done

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        transport.write(
            b"GET " + self.path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.buf += data
            if b"\r\n\r\n" in self.buf:
                _, rest = self.buf.split(b"\r\n\r\n", 1)
                self.upgraded.set_result(None)
                self.buf = b""
                if rest:
                    self.data_received(rest)
            return
        if not self.frame_len:  # learn the frame size from the first frame
            self.buf += data
            if len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                self.frame_len = 2 + n if n < 126 else 4 + int.from_bytes(self.buf[2:4], "big")
            data, self.buf = self.buf, b""
        self.received += len(data)
        if self.expected > 0 and self.received >= self.expected and not self.done.done():
            self.done.set_result(None)


async def open_clients(port: int, n: int, start: int) -> list[Counter]:
    loop = asyncio.get_running_loop()
    clients = []
    for i in range(start, start + n):
        done: asyncio.Future[None] = loop.create_future()
        path = f"/conn?token=u{i}".encode()
        _, proto = await loop.create_connection(
            lambda path=path, done=done: Counter(path, done), "127.0.0.1", port
        )
        await proto.upgraded
        clients.append(proto)
    return clients


async def broadcast_run(ports: list[int], n: int, m: int) -> float:
    from im_client import Client

    per = n // len(ports)
    clients: list[Counter] = []
    for k, port in enumerate(ports):
        clients += await open_clients(port, per, k * per)
    trigger = Client(f"http://127.0.0.1:{ports[0]}/conn", "trigger")
    await trigger.connect()
    await asyncio.sleep(1.0)  # let every node register its users
    # Warm-up: one broadcast, to learn the frame size.
    await trigger.send(b"bench:broadcast:1")
    await trigger.receive()
    await asyncio.sleep(0.5)
    missed = sum(not c.frame_len for c in clients)
    assert not missed, f"{missed} clients got no warm-up frame"
    for c in clients:
        c.received = 0
        c.expected = m * c.frame_len
    start = time.perf_counter()
    await trigger.send(b"bench:broadcast:%d" % m)
    await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), 120)
    elapsed = time.perf_counter() - start
    await trigger.close()
    short = sum(c.received != c.expected for c in clients)
    for c in clients:
        c.transport.close()
    assert not short, f"{short} clients did not get exactly {m} frames"
    return per * len(ports) * m / elapsed


async def latency_run(
    broker: str, broker_args: list[str], plugin: dict[str, Any], remote_port: int | None, k: int
) -> list[float]:
    from im_client import Client
    from im_core import Options, Server
    from im_core.plugins import get_plugin_manager

    opts = Options.from_values(
        host="127.0.0.1", http_port=0, rpc_port=0, broker=broker, plugin=plugin
    )
    a = Server(opts, get_plugin_manager((), autoload=False))
    await a.start()
    try:
        port = remote_port or next(t.port for t in a.transports if t.name == "http")
        client = Client(f"http://127.0.0.1:{port}/conn", "latency", heartbeat=None)
        await client.connect()
        for _ in range(500):  # until A sees the client online
            if await a.presence("latency") is not None:
                break
            await asyncio.sleep(0.01)
        samples = []
        for i in range(k + 100):
            t0 = time.perf_counter()
            task = asyncio.ensure_future(a.push("latency", PAYLOAD))
            await client.receive()
            t1 = time.perf_counter()
            assert (await task).missing == ()
            if i >= 100:  # skip warm-up
                samples.append((t1 - t0) * 1000)
        await client.close()
        return samples
    finally:
        await a.stop()


#: the NATS broker's KV buckets (``P_<name>``); Redis keys all start with ``P:``
NATS_BUCKETS = ("presence", "nodes", "held", "inbox", "seen", "tagbox")


async def cleanup(broker: str, prefix: str, url: str | None = None) -> None:
    """Drop what a benchmark cluster left in the broker (``url``: default URLs)."""
    if broker == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url) if url else aioredis.Redis()
        try:
            keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await r.delete(*keys)
        finally:
            await r.aclose()
    else:
        import nats
        import nats.js.errors

        nc = await (nats.connect(url) if url else nats.connect())
        try:
            js = nc.jetstream()
            for bucket in NATS_BUCKETS:  # an older server made fewer of them
                try:
                    await js.delete_key_value(f"{prefix}_{bucket}")
                except nats.js.errors.NotFoundError:
                    pass
        finally:
            await nc.close()


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--broker", default="redis", choices=["redis", "nats"])
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--messages", type=int, default=100)
    ap.add_argument("--pushes", type=int, default=2000)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    args = ap.parse_args()
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {args.client_cpu})
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    broker_args = ["--broker", args.broker, "--broker-prefix", prefix]
    plugin = {"broker_prefix": prefix}

    # Latency: 1 node (client on the pushing node) vs 2 nodes (client on node B).
    local = await latency_run("memory", [], {}, None, args.pushes)
    b = Node(broker_args, args.server_cpu)
    await b.ready()
    try:
        remote = await latency_run(args.broker, broker_args, plugin, b.port, args.pushes)
    finally:
        b.stop()
    for name, s in (("1 node (local)", local), (f"2 nodes ({args.broker})", remote)):
        print(
            f"push latency {name:<16} p50 {pct(s, 50):.3f} ms  p99 {pct(s, 99):.3f} ms  "
            f"mean {statistics.mean(s):.3f} ms  ({len(s)} pushes)"
        )

    # Broadcast deliveries/s.
    results = {}
    for label, nodes_args in (
        ("1 node (memory)", [["--broker", "memory"]]),
        (f"1 node ({args.broker})", [broker_args]),
        (f"2 nodes ({args.broker})", [broker_args, broker_args]),
    ):
        nodes = [Node(a, args.server_cpu) for a in nodes_args]
        try:
            for node in nodes:
                await node.ready()
            rate = await broadcast_run([n.port for n in nodes], args.clients, args.messages)
        except (AssertionError, TimeoutError) as exc:
            print(f"broadcast {label:<18} failed: {exc!r}")
            continue
        finally:
            for node in nodes:
                node.stop()
        results[label] = rate
        print(
            f"broadcast {label:<18} {rate:>12,.0f} deliveries/s  "
            f"(N={args.clients}, M={args.messages} x 64 B)"
        )
    await cleanup(args.broker, prefix)
    base = results.get("1 node (memory)")
    two = results.get(f"2 nodes ({args.broker})")
    if base and two:
        print(f"2 nodes / 1 node: {two / base:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
