"""Delivery costs: what ``store`` and ``ack`` cost a unicast push, and what a login
costs, with each broker; and the plain paths against another tree of im (``--base``).

    python -m bench delivery --runs 3
    python -m bench delivery --brokers redis --modes grpc-stream --base ../im-old --runs 3

Per run and broker, one server process per tree (this one, then ``--base`` when
given; the order alternates between runs), each with a broker prefix of its own
that is removed afterwards:

- login: CONNECT_N clients with a tag connect (64 in flight) and ping at once; a
  server reads a socket's frames only once the login is registered (broker
  included), so the pong marks the end of the login. Logins/s = N / (first connect
  -> last pong), and the server's CPU per login. Then every client closes (a
  cluster node writes "last seen" per disconnect: CPU per disconnect) and all log in
  again ("relogin": a cluster node then also reads the tag's kept pushes).
- unicast: USERS clients that ack every push with a sid; per mode and variant
  (``none``, ``ack``, ``store``; the order turns from run to run) the rows of
  ``bench/unicast.py``: pushes/s at full rate, push -> client p50/p99 paced at
  ``--rate`` (and at half the variant's own rate when that is lower), the server's
  CPU per push. After each variant the server's unacked count and the broker's kept
  entries must drain to zero. The base tree runs ``--base-variants`` (``none``; an
  older tree may know ``ack`` too, without a broker copy).
- offline (``store`` only, this tree): N pushes to N users who are not connected,
  each kept; pushes/s and the server's CPU per push.

Ratios are taken within a run (variant / none in the same process, this tree / base
in adjacent processes), then the median over runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import aiohttp
import grpc

from im_plugins.pb import im_v1_pb2_grpc

from .cluster import cleanup
from .loadgen import Pool, client_frame
from .servers import HOST, IM, ROOT, Running, Spec, running
from .unicast import (
    CONCURRENCY,
    FLAGS,
    PACED_SECONDS,
    HttpPool,
    Receivers,
    Tally,
    check,
    make_sender,
    parse_flags,
    run_mode,
)

BROKERS = ("memory", "redis", "nats")
VARIANTS = ("none", "ack", "store")
MODES = ("grpc-stream", "http")
CONNECT_N = 5000
CONNECT_CONCURRENCY = 64
TAGS = 10
PUSHES = 20000
#: more users with kept entries make the NATS broker's sweep (every kept user's entry
#: read each second) crowd out the node's other broker calls; see docs/performance.md
OFFLINE_PUSHES = 1000
DRAIN_TIMEOUT = 30.0
#: paced rates for latency, pushes/s; each where the variant has twice that rate
RATES = (5000.0, 500.0)
PING = client_frame(0x9, b"")
PONG_BYTES = 2  # an empty pong from the server: two header bytes
#: a summary group: broker, tree, kind, mode, variant
Key: TypeAlias = tuple[str, str, str, str, str]


def broker_args(broker: str, prefix: str, args: argparse.Namespace) -> list[str]:
    if broker == "memory":
        return ["--broker", "memory"]
    url = args.redis_url if broker == "redis" else args.nats_url
    return ["--broker", broker, f"--{broker}-url", url, "--broker-prefix", prefix]


class Kept:
    """Counts the kept entries a cluster broker holds under one prefix."""

    def __init__(self, broker: str, prefix: str, url: str) -> None:
        self.broker, self.prefix, self.url = broker, prefix, url
        self.client: Any = None

    async def __aenter__(self) -> Kept:
        if self.broker == "redis":
            import redis.asyncio as aioredis

            self.client = aioredis.Redis.from_url(self.url)
        elif self.broker == "nats":
            import nats

            self.client = await nats.connect(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.broker == "redis":
            await self.client.aclose()
        elif self.broker == "nats":
            await self.client.close()
        if self.broker != "memory":
            await cleanup(self.broker, self.prefix, self.url)

    async def count(self) -> int:
        """Redis: kept entries (``P:inbox_due``); NATS: users with kept entries."""
        if self.broker == "redis":
            return int(await self.client.zcard(f"{self.prefix}:inbox_due"))
        if self.broker == "nats":
            import nats.js.errors

            try:
                kv = await self.client.jetstream().key_value(f"{self.prefix}_inbox")
                return len(await kv.keys())
            except (nats.js.errors.NoKeysError, nats.js.errors.NotFoundError):  # none, no bucket
                return 0
        return 0


async def unacked(server: Running) -> int:
    """Pushes the server still waits an ack for (-1: it cannot say right now)."""
    async with server.session.get(server.base + "stats") as r:
        return int((await r.json())["unacked"]) if r.status == 200 else -1


async def drain(server: Running, kept: Kept) -> dict[str, float]:
    """Wait until the server tracks no unacked push and the broker keeps no entry
    (acks drop both); how long that took, or what was left."""
    t0 = time.perf_counter()
    while True:
        left, entries = await unacked(server), await kept.count()
        waited = time.perf_counter() - t0
        if not left and not entries:
            return {"drain_s": waited}
        if waited > DRAIN_TIMEOUT:
            return {"drain_s": waited, "left_unacked": left, "left_kept": entries}
        await asyncio.sleep(0.1)


async def logins(server: Running, n: int) -> dict[str, float]:
    """n tagged logins that ping at once; returns logins/s (to the last pong) and the
    server's CPU per login, then closes them all: CPU per disconnect."""
    pool = Pool(HOST, server.port, hello=PING)
    pool.expect, pool.target = PONG_BYTES, n
    paths = [f"/conn?token=c{i}&tags=t{i % TAGS}" for i in range(n)]
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    try:
        await pool.open(paths, concurrency=CONNECT_CONCURRENCY)
        if pool.failed or len(pool.clients) != n:
            raise RuntimeError(f"{pool.failed} of {n} logins failed")
        done = await asyncio.wait_for(pool.all_done, 60)
        cpu = server.cpu_seconds() - cpu0
        await server.wait_count(n)
        await asyncio.sleep(0.5)  # the coalesced tag-state write, before the close clock
    finally:
        cpu1 = server.cpu_seconds()
        pool.close()
    await server.wait_count(0)
    await asyncio.sleep(1.0)  # each disconnect's broker writes run after it
    return {
        "per_s": n / (done - t0),
        "us": cpu / n * 1e6,
        "close_us": (server.cpu_seconds() - cpu1) / n * 1e6,
    }


async def measure_variant(
    mode: str,
    server: Running,
    rx: Receivers,
    n: int,
    rates: Sequence[float],
    flags: dict[str, bool],
) -> dict[str, float]:
    """One variant's row: full rate, then paced at each of ``rates`` it has twice the
    rate for (nearer its limit the latency is a queue's), or else at half its rate."""
    full = await run_mode(mode, server, rx, n, None, flags)
    row = {k: full[k] for k in ("per_s", "server_us", "server_busy", "loadgen_busy")}
    row["full_p99_ms"] = full["p99_ms"]
    paced = [r for r in rates if 2 * r <= full["per_s"]]
    for rate in paced:
        slow = await run_mode(mode, server, rx, int(rate * PACED_SECONDS), rate, flags)
        row[f"p50_ms@{rate:g}"], row[f"p99_ms@{rate:g}"] = slow["p50_ms"], slow["p99_ms"]
    if not paced:
        half = max(100.0, round(full["per_s"] / 2, -2))
        slow = await run_mode(mode, server, rx, int(half * PACED_SECONDS), half, flags)
        row["half_rate"], row["half_p50_ms"], row["half_p99_ms"] = (
            half,
            slow["p50_ms"],
            slow["p99_ms"],
        )
    return row


async def offline(
    server: Running, mode: str, n: int, flags: dict[str, bool], tag: str
) -> dict[str, float]:
    """n pushes to n users nobody connected as, each to be kept (``store``)."""
    users = [f"off-{tag}-{i}" for i in range(n)]
    pool = HttpPool(server.base, CONCURRENCY)
    tally = Tally()
    async with grpc.aio.insecure_channel(f"{HOST}:{server.rpc_port}") as channel:
        stub = im_v1_pb2_grpc.ImStub(channel)
        send = make_sender(mode, server, users, None, stub, pool, flags, tally)
        try:
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            await send(n)
            elapsed = time.perf_counter() - t0
        finally:
            pool.close()
    check(tally, n, flags, offline=True)
    return {"per_s": n / elapsed, "server_us": (server.cpu_seconds() - cpu0) / n * 1e6}


async def session(
    spec: Spec,
    broker: str,
    run: int,
    variants: Sequence[str],
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
) -> None:
    """One server of ``spec`` on ``broker``: logins, then every mode x variant, each
    row added to ``rows`` as it is measured (a later failure keeps them)."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    url = args.redis_url if broker == "redis" else args.nats_url
    head = {"broker": broker, "tree": spec.name, "run": run}
    rates = [float(r) for r in args.rates.split(",")]

    def add(row: dict[str, Any]) -> None:
        rows.append({**head, **row})
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}
        print(shown, flush=True)

    extra = broker_args(broker, prefix, args)
    async with Kept(broker, prefix, url) as kept, running(spec, extra_args=extra) as server:
        first = await logins(server, args.connect_n)
        again = await logins(server, args.connect_n)
        add({"kind": "login", **first, **{f"re_{k}": v for k, v in again.items()}})
        async with aiohttp.ClientSession() as http:
            rx = Receivers(spec, server.port, args.users)
            await rx.start(http)
            try:
                await server.wait_count(args.users)
                for mode in args.modes.split(","):
                    for variant in variants:
                        flags = parse_flags(variant)
                        row = await measure_variant(mode, server, rx, args.pushes, rates, flags)
                        row |= await drain(server, kept)
                        add({"kind": "unicast", "mode": mode, "variant": variant, **row})
            finally:
                await rx.close()
        if rx.resent:
            add({"kind": "resent", "resent": rx.resent})
        if "store" in variants and args.offline:
            for mode in args.modes.split(","):
                row = await offline(server, mode, args.offline, {"store": True}, f"{run}-{mode}")
                add({"kind": "offline", "mode": mode, "variant": "store", **row})


# --- summary --------------------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(rows: list[dict[str, Any]], new: str, base: str) -> dict[str, Any]:
    """Medians per (broker, tree, kind, mode, variant), and the medians of the per-run
    ratios: variant / none within a process, this tree / base between processes."""
    groups: dict[Key, list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["broker"], r["tree"], r["kind"], r.get("mode", ""), r.get("variant", ""))
        groups.setdefault(key, []).append(r)

    def find(key: Key, run: int) -> dict[str, Any] | None:
        return next((r for r in groups.get(key, []) if r["run"] == run), None)

    out: dict[str, Any] = {}
    for key, rs in groups.items():
        broker, tree, kind, mode, variant = key
        med: dict[str, Any] = {"runs": len(rs)}
        for metric in sorted({k for r in rs for k, v in r.items() if isinstance(v, float)}):
            med[metric] = median([r[metric] for r in rs if metric in r])
        for metric in ("per_s", "server_us", "us", "re_per_s", "re_us", "close_us"):
            pairs: tuple[tuple[str, Key | None], ...] = (
                ("vs_none", (broker, tree, kind, mode, "none") if variant != "none" else None),
                ("vs_base", (broker, base, kind, mode, variant) if tree == new else None),
            )
            for label, other in pairs:
                if other is None or other not in groups:
                    continue
                ratios = [
                    r[metric] / o[metric]
                    for r in rs
                    if metric in r and (o := find(other, r["run"])) and o.get(metric)
                ]
                if ratios:
                    med[f"{metric}_{label}"] = median(ratios)
        out["/".join(k for k in key if k)] = med
    return out


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def latency(m: dict[str, Any], p50: str, p99: str) -> str:
    return f"{fmt(m.get(p50), '.2f')} / {fmt(m.get(p99), '.2f')}" if p50 in m else "-"


def tables(
    summary: dict[str, Any], brokers: Sequence[str], rates: Sequence[str], new: str, base: str
) -> str:
    paced = "".join(f"| p50 / p99 ms at {float(r):,.0f}/s " for r in rates)
    lines = []
    for broker in brokers:
        lines += [
            f"\n{broker}: unicast, median of runs (ratios: median of per-run ratios)",
            "| tree | mode | variant | pushes/s | vs none | vs base | server us/push "
            f"{paced}| at half its rate | drain s |",
            "|---" * (9 + len(rates)) + "|",
        ]
        for key, m in summary.items():
            parts = key.split("/")
            if parts[0] != broker or parts[2] not in ("unicast", "offline"):
                continue
            what = parts[4] if parts[2] == "unicast" else "store, to offline users"
            half = latency(m, "half_p50_ms", "half_p99_ms")
            if "half_rate" in m:
                half = f"{m['half_rate']:,.0f}/s: {half}"
            lines.append(
                f"| {parts[1]} | {parts[3]} | {what} | {fmt(m.get('per_s'))} "
                f"| {fmt(m.get('per_s_vs_none'), '.2f')} | {fmt(m.get('per_s_vs_base'), '.2f')} "
                f"| {fmt(m.get('server_us'), '.1f')} "
                + "".join(f"| {latency(m, f'p50_ms@{r}', f'p99_ms@{r}')} " for r in rates)
                + f"| {half} | {fmt(m.get('drain_s'), '.1f')} |"
            )
    lines += [
        "\nlogins (tagged; relogin: after every client left once)",
        "| broker | tree | logins/s | vs base | server us/login | relogins/s | vs base "
        "| server us/relogin | server us/disconnect | vs base |",
        "|---" * 10 + "|",
    ]
    for broker in brokers:
        for tree in (new, base):
            m = summary.get(f"{broker}/{tree}/login")
            if m is None:
                continue
            lines.append(
                f"| {broker} | {tree} | {fmt(m.get('per_s'))} "
                f"| {fmt(m.get('per_s_vs_base'), '.2f')} "
                f"| {fmt(m.get('us'), '.0f')} | {fmt(m.get('re_per_s'))} "
                f"| {fmt(m.get('re_per_s_vs_base'), '.2f')} | {fmt(m.get('re_us'), '.0f')} "
                f"| {fmt(m.get('close_us'), '.0f')} | {fmt(m.get('close_us_vs_base'), '.2f')} |"
            )
    return "\n".join(lines)


# --- entry point ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("delivery")
    g.add_argument("--brokers", default=",".join(BROKERS))
    g.add_argument("--variants", default=",".join(VARIANTS), help='push flags: "none", "ack", …')
    g.add_argument("--base", default="", help="another im tree: the plain paths against it")
    g.add_argument("--base-variants", default="none", help='what the base tree runs: "none,ack"')
    g.add_argument("--pushes", type=int, default=PUSHES, help="pushes per full-rate phase")
    g.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES), help="paced pushes/s")
    g.add_argument("--connect-n", type=int, default=CONNECT_N, help="logins per login phase")
    g.add_argument("--offline", type=int, default=OFFLINE_PUSHES, help="0: no offline phase")
    g.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    g.add_argument("--nats-url", default="nats://127.0.0.1:4222")


async def collect(args: argparse.Namespace, trees: Sequence[Spec]) -> list[dict[str, Any]]:
    brokers, variants = args.brokers.split(","), args.variants.split(",")
    base_variants = args.base_variants.split(",")
    rows: list[dict[str, Any]] = []
    for i in range(args.runs):
        turn = i % len(variants)  # no variant always first (or last) in its process
        order = variants[turn:] + variants[:turn]
        for broker in brokers[i % len(brokers) :] + brokers[: i % len(brokers)]:
            for spec in trees if i % 2 == 0 else trees[::-1]:
                mine = order if spec is IM else [v for v in order if v in base_variants]
                t0 = time.monotonic()
                try:
                    await session(spec, broker, i, mine, args, rows)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    rows.append({"broker": broker, "tree": spec.name, "run": i, "error": error})
                    print(f"run {i} {broker} {spec.name}: {error}", flush=True)
                print(f"run {i} {broker} {spec.name}: {time.monotonic() - t0:.0f}s", flush=True)
    return rows


def main(args: argparse.Namespace, results: Path, versions: dict[str, str]) -> int:
    import uvloop

    for v in args.variants.split(","):
        parse_flags(v)  # fail before any server starts
    trees = [IM]
    if args.base:
        trees.append(dataclasses.replace(IM, name="base", root=Path(args.base).resolve()))
    rows = uvloop.run(collect(args, trees))
    brokers = args.brokers.split(",")
    summary = summarize([r for r in rows if "error" not in r], IM.name, "base")
    rates = [f"{float(r):g}" for r in args.rates.split(",")]
    print(tables(summary, brokers, rates, IM.name, "base"))
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"delivery-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "versions": versions,
        "flags": FLAGS,
        "users": args.users,
        "rates": args.rates,
        "base": args.base,
    }
    out.write_text(json.dumps({"meta": meta, "runs": rows, "summary": summary}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")
    return 1 if any("error" in r for r in rows) else 0
