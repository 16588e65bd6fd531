"""A backend's broadcasts one call at a time, and what ``--write-delay`` does to them.

    python -m bench calls --n 2000,10000 --delays 0,1,5,20 --runs 3 [--base ../im-old]
    python -m bench calls --n 2000 --delays 0,5 --caller aio,sync   # two kinds of backend

Per run and N: im once per write delay, another tree of im (``--base``), then the
aiohttp peer, each in its own process on the server core with N counting clients. A
caller process (``bench.caller``, on the load generator's core but ahead of it)
makes ``M`` = 100 broadcast calls one after another, each awaited: im through the
original's gRPC API (``im.basic.Basic/Broadcast``), the peer through its own HTTP
``broadcast`` (which answers once it has sent to every client). Measured:

- deliveries/s = N x M / (first call -> last byte at the last client);
- server CPU per delivery (its CPU time over the session / N x M), in microseconds;
- latency of each message (its call began -> the message whole at a client), p50 /
  p99 over ``PROBES`` clients spread over the N (including the last to connect, which
  a fan-out writes last) and all M messages; "added p99" is im's p99 at a delay minus
  its p99 without one, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .loadgen import Pool
from .scenarios import CONNECT_CONCURRENCY, SIZE, CheckFailed, _broadcast, _settled_counts
from .servers import AIOHTTP, HELPER_ARGV, HOST, IM, ROOT, SPECS, Running, Spec, running

M = 100
PROBES = 50


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def arrivals(stamps: list[tuple[float, int]], frame_bytes: int, m: int) -> list[float]:
    """When each of ``m`` fixed-size messages was whole at a client."""
    out, k = [], 1
    for at, got in stamps:
        while k <= m and got >= k * frame_bytes:
            out.append(at)
            k += 1
    return out


async def call(server: Running, m: int, caller: str = "aio") -> dict[str, Any]:
    """Run the caller process against ``server``; its call start and end times."""
    if server.spec.im:
        how, target = ("grpc-sync" if caller == "sync" else "grpc"), f"{HOST}:{server.rpc_port}"
    else:
        how, target = "http", server.base
    proc = await asyncio.create_subprocess_exec(
        *HELPER_ARGV, *(sys.executable, "-m", "bench.caller"),
        *(how, target, str(m), str(SIZE)),
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"caller exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


async def calls_session(
    spec: Spec, n: int, extra: list[str], caller: str = "aio"
) -> dict[str, Any]:
    result: dict[str, Any] = {"server": spec.name, "n": n}
    async with running(spec, extra_args=extra) as server:
        pool = Pool(HOST, server.port, hello=spec.hello)
        try:
            await pool.open([spec.client_path(i) for i in range(n)], CONNECT_CONCURRENCY)
            if pool.failed or len(pool.clients) != n:
                raise CheckFailed(f"{spec.name}: {pool.failed} of {n} connections failed")
            await server.wait_count(n)
            await asyncio.sleep(0.5)
            await _broadcast(server, pool, 1, 0)  # tells the frame size
            counts = await _settled_counts(pool)
            if len(counts) != 1:
                raise CheckFailed(f"{spec.name}: uneven first broadcast {counts}")
            frame_bytes = next(iter(counts))
            probes = pool.clients[:: max(1, n // (PROBES - 1))][: PROBES - 1]
            probes.append(pool.clients[-1])
            for c in probes:
                c.stamps = []
            done = pool.arm(M * frame_bytes)
            cpu0 = server.cpu_seconds()
            calls = await call(server, M, caller)
            last = await asyncio.wait_for(done, max(30.0, n * M / 2000))
            cpu = server.cpu_seconds() - cpu0
            counts = await _settled_counts(pool)
            if counts != {M * frame_bytes: n}:
                raise CheckFailed(f"{spec.name}: counts {counts}")
            starts = calls["starts"]
            lat = []
            for c in probes:
                assert c.stamps is not None
                times = arrivals(c.stamps, frame_bytes, M)
                lat.extend((at - t0) * 1000 for at, t0 in zip(times, starts, strict=True))
            rtt = [(e - s) * 1000 for s, e in zip(starts, calls["ends"], strict=True)]
            result.update(
                deliveries_per_s=n * M / (last - starts[0]),
                us_per_delivery=cpu / (n * M) * 1e6,
                p50_ms=statistics.median(lat),
                p99_ms=pct(lat, 0.99),
                call_p50_ms=statistics.median(rtt),
                call_p99_ms=pct(rtt, 0.99),
                seconds=last - starts[0],
            )
        finally:
            pool.close()
            await asyncio.sleep(0.2)
    return result


def configs(args: argparse.Namespace) -> list[tuple[str, Spec, list[str], str]]:
    out = []
    for caller in args.caller.split(","):
        for delay in args.delays.split(","):
            who = "im" if caller == "aio" else f"im ({caller} caller)"
            name = f"{who} --write-delay {delay}"
            extra = [*shlex.split(args.server_args), "--write-delay", delay]
            out.append((name, dataclasses.replace(IM, name=name), extra, caller))
    if "base" in SPECS:  # another tree of im (--base), as it is
        out.append(("base", SPECS["base"], shlex.split(args.server_args), "aio"))
    out.append(("aiohttp", AIOHTTP, [], "aio"))
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | server | deliveries/s | vs aiohttp | server µs/delivery | p50 ms | p99 ms "
        "| added p99 ms | call p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by = {(r["n"], r["server"]): r for r in rows}
    for n in sorted({r["n"] for r in rows}):
        peer = by.get((n, "aiohttp"), {})
        for (k, name), r in by.items():
            if k != n:
                continue
            # added latency: against the same caller's run without a delay
            zero = by.get((n, name.rsplit(" ", 1)[0] + " 0"), {})
            vs = r["deliveries_per_s"] / peer["deliveries_per_s"] if peer else None
            added = r["p99_ms"] - zero["p99_ms"] if zero and name != "aiohttp" else None
            lines.append(
                f"| {n:,} | {name} | {r['deliveries_per_s']:,.0f} "
                f"| {'-' if vs is None else f'{vs:.1f}x'} | {r['us_per_delivery']:.2f} "
                f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                f"| {'-' if added is None else f'{added:+.1f}'} | {r['call_p99_ms']:.1f} |"
            )
    return "\n".join(lines)


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r:
            groups.setdefault((r["n"], r["server"]), []).append(r)
    out = []
    for (n, name), rs in groups.items():
        med: dict[str, Any] = {"n": n, "server": name, "runs": len(rs)}
        for key in rs[0]:
            if key not in med and isinstance(rs[0][key], float):
                med[key] = statistics.median(r[key] for r in rs)
        out.append(med)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        for n in (int(x) for x in args.n.split(",")):
            for name, spec, extra, caller in configs(args):
                try:
                    r = await calls_session(spec, n, extra, caller)
                except Exception as exc:
                    r = {"server": name, "n": n, "error": f"{type(exc).__name__}: {exc}"}
                r["run"] = i
                runs.append(r)
                print(f"run {i} N={n} {name}: {r}", flush=True)
    return {"runs": runs, "summary": medians(runs)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("calls")
    g.add_argument("--delays", default="0,1,5,20", help="calls: im --write-delay values, ms")
    g.add_argument(
        "--caller",
        default="aio",
        help="calls: im's gRPC caller, aio (grpc.aio) and/or sync (a blocking stub), e.g. aio,sync",
    )


def main(args: argparse.Namespace, results: Path, versions: dict[str, str]) -> int:
    import uvloop

    result = uvloop.run(run(args))
    print(table(result["summary"]))
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"calls-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"command": "python -m bench " + " ".join(sys.argv[1:]), "versions": versions}
    out.write_text(json.dumps({"meta": meta, **result}, indent=1))
    print(f"wrote {out}")
    return 0
