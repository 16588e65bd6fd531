"""C100k: 100,000 idle connections on one machine, held by ``im-run --workers N``.

    python -m bench c100k --connections 100000 --workers 6 --procs 6 --runs 1

One process may open at most ~20,000 files here, so the server side is spread over
``--workers`` (each gets its share through ``SO_REUSEPORT``) and the clients over
``--procs`` load-generator processes (``bench.c100k_clients``), whose sockets leave
from the loopback source addresses 127.0.0.2-51. Nothing is pinned: the workers,
their embedded nats-server and the load generators share both cores. Heartbeats are
on: ``--heartbeat`` (default 30 s) makes the server ping a client silent for 15 s,
and the clients answer with pongs; the idle hold (``--hold``, default 35 s) lasts
long enough for every connection to be pinged. Measured:

- connection setup: connections/s (all load generators at once, ``--concurrency``
  in flight each), and per server CPU-second (the whole server tree's CPU);
- memory: server RSS growth / connections, for the whole tree (supervisor, workers,
  nats-server) and for the workers alone (kernel socket buffers are not RSS);
- heartbeats: pings answered during the hold, connections closed (must be none);
- one broadcast -> the last of all connections, ms (``--samples`` of them, median),
  each checked: every client got exactly one whole message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from .servers import HOST, IM, ROOT, Running, Spec, _py, b64, payload, rss_kb, running, tree


def spec(workers: int, heartbeat: float) -> Spec:
    return Spec(
        name=f"im-w{workers}",
        argv=lambda port, rpc: _py(
            *("-m", "im_core.cli", "--host", HOST, "--http-port", str(port)),
            *("--rpc-port", str(rpc), "--heartbeat-interval", str(heartbeat)),
            *("--log-level", "WARNING", "--workers", str(workers)),
        ),
        client_path=IM.client_path,
        api=IM.api,
        env=IM.env,
        im=True,
        pinned=False,
        count_field="online_connections",
        nodes=workers,
    )


class Generator:
    """One ``bench.c100k_clients`` process and its command pipe."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> Generator:
        proc = await asyncio.create_subprocess_exec(
            *_py("-m", "bench.c100k_clients"),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(command) + b"\n")
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator {self.proc.pid} exited")
        return orjson.loads(line)

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def split_rss(server: Running) -> tuple[int, int]:
    """(whole tree, workers only) RSS in KB: the workers are the supervisor's
    ``im_core.cli`` children; nats-server and the supervisor are the rest."""
    total = workers = 0
    for pid in tree(server.pid):
        try:
            kb = rss_kb(pid)
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except (OSError, RuntimeError):
            continue
        total += kb
        if pid != server.pid and b"im_core.cli" in cmd:
            workers += kb
    return total, workers


async def session(args: argparse.Namespace) -> dict[str, Any]:
    n, procs = args.connections, args.procs
    result: dict[str, Any] = {"n": n, "workers": args.workers, "procs": procs}
    async with running(spec(args.workers, args.heartbeat)) as server:
        gens = [await Generator.start() for _ in range(procs)]
        try:
            await asyncio.sleep(1.0)
            tree0, workers0 = split_rss(server)
            shares = [n // procs + (k < n % procs) for k in range(procs)]
            firsts = [sum(shares[:k]) for k in range(procs)]
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            opened = await asyncio.gather(
                *(
                    g.ask(open=[server.port, first, share, args.concurrency])
                    for g, first, share in zip(gens, firsts, shares, strict=True)
                )
            )
            setup = time.perf_counter() - t0
            cpu = server.cpu_seconds() - cpu0
            failed = sum(o["failed"] for o in opened)
            if failed:
                raise RuntimeError(f"{failed} of {n} connections failed")
            await server.wait_count(n, timeout=120)
            result["connect_per_s"] = n / setup
            result["connect_per_cpu_s"] = n / cpu
            result["setup_s"] = setup
            async with server.session.get(server.base + "nodes") as r:
                nodes = (await r.json())["nodes"]
            result["per_worker"] = sorted(node["connections"] for node in nodes)
            # idle, heartbeats on: every connection is pinged at least once
            pings0 = sum([(await g.ask(stats=True))["pings"] for g in gens])
            await asyncio.sleep(args.hold)
            stats = [await g.ask(stats=True) for g in gens]
            result["pings_in_hold"] = sum(s["pings"] for s in stats) - pings0
            closes: dict[str, int] = {}
            for s in stats:
                for how, k in s["closes"].items():
                    closes[how] = closes.get(how, 0) + k
            if closes:
                raise RuntimeError(f"connections closed while idle: {closes}")
            tree1, workers1 = split_rss(server)
            result["rss_mb"] = tree1 / 1024
            result["kb_per_conn"] = (tree1 - tree0) / n
            result["worker_kb_per_conn"] = (workers1 - workers0) / n
            body = orjson.dumps({"data_b64": b64(payload(0, 64))})
            samples = []
            for k in range(args.samples):
                await asyncio.gather(*(g.ask(arm=1) for g in gens))
                t0 = time.perf_counter()
                await server.post("broadcast", body)
                waited = await asyncio.gather(*(g.ask(wait=30) for g in gens))
                counts: dict[str, int] = {}
                for w in waited:
                    for got, clients in w["counts"].items():
                        counts[got] = counts.get(got, 0) + clients
                if counts != {"1": n}:
                    raise RuntimeError(f"broadcast {k}: messages per client {counts}")
                samples.append((max(w["last"] for w in waited) - t0) * 1000)
                await asyncio.sleep(1.0)
            result["broadcast_ms"] = statistics.median(samples)
            result["broadcast_samples_ms"] = [round(s, 1) for s in samples]
        finally:
            await asyncio.gather(*(g.stop() for g in gens))
    return result


TABLE = (
    ("connect_per_s", "connections/s (all load generators)", "{:,.0f}"),
    ("connect_per_cpu_s", "connections per server CPU-second", "{:,.0f}"),
    ("kb_per_conn", "server RSS per connection (tree), KB", "{:,.2f}"),
    ("worker_kb_per_conn", "  of which the workers, KB", "{:,.2f}"),
    ("rss_mb", "server RSS with all connected (tree), MB", "{:,.0f}"),
    ("pings_in_hold", "pings answered during the idle hold", "{:,.0f}"),
    ("broadcast_ms", "1 broadcast -> last of all clients, ms", "{:,.0f}"),
)


def main(args: argparse.Namespace, results: Path, versions: dict[str, str]) -> int:
    import uvloop

    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # nothing pinned here
    runs = []
    for i in range(args.runs):
        t0 = time.monotonic()
        try:
            r = uvloop.run(session(args))
        except Exception as exc:
            traceback.print_exc()
            r = {"error": f"{type(exc).__name__}: {exc}"}
        r["run"] = i
        runs.append(r)
        print(f"run {i} ({time.monotonic() - t0:.0f}s): {r}", flush=True)
    ok = [r for r in runs if "error" not in r]
    lines = [f"| measure (N = {args.connections:,}, {args.workers} workers) | median | runs |"]
    lines.append("|---|---|---|")
    for key, label, fmt in TABLE:
        values = [r[key] for r in ok]
        if values:
            shown = " / ".join(fmt.format(v) for v in values)
            lines.append(f"| {label} | {fmt.format(statistics.median(values))} | {shown} |")
    print("\n".join(lines))
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"c100k-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"command": "python -m bench " + " ".join(sys.argv[1:]), "versions": versions}
    out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print(f"wrote {out}")
    return 0 if ok else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("c100k")
    g.add_argument("--connections", type=int, default=100_000, help="c100k: idle clients")
    g.add_argument("--workers", type=int, default=6, help="c100k: im-run --workers")
    g.add_argument("--procs", type=int, default=6, help="c100k: load-generator processes")
    g.add_argument("--concurrency", type=int, default=32, help="c100k: connects in flight each")
    g.add_argument("--heartbeat", type=float, default=30.0, help="c100k: --heartbeat-interval")
    g.add_argument("--hold", type=float, default=35.0, help="c100k: idle seconds before measuring")
    g.add_argument("--samples", type=int, default=5, help="c100k: broadcasts timed")
