"""Unicast pushes while broadcasts to 10,000 clients happen: does a fan-out hold them up?

    python -m bench behind --runs 3 --base ../im-old

Per run: im, im with slicing off (``--fanout-slice`` past N and no time budget:
the whole fan-out in one loop turn, as before slicing) and, with ``--base``,
another tree of im. Each on the server core with N = 10,000 counting clients (the
load generator, on the other core) plus ``--receivers`` clients held by a separate pusher process
(``bench.pusher``, on the load generator's core but ahead of it), which sends
``--behind-rate`` pushes/s to them for ``--seconds`` through the original's gRPC
``SendMessage`` (or the HTTP ``push_user``: ``--behind-api http``). The harness
broadcasts one 64 B message to everyone every second through the HTTP API.
Reported: unicast push -> client p50 / p99 overall, p99 of the pushes sent within
``WINDOW`` after a broadcast was triggered ("behind") and of the rest ("away"), the
push call's round trip p99, and each broadcast's time to the last client.
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

from .calls import pct
from .loadgen import Pool
from .scenarios import CONNECT_CONCURRENCY, SIZE, CheckFailed, _settled_counts
from .servers import HELPER_ARGV, HOST, IM, ROOT, SPECS, Spec, burst_request, running

WINDOW = 0.35  # seconds after a broadcast trigger


async def behind_session(
    spec: Spec, n: int, extra: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    result: dict[str, Any] = {"server": spec.name, "n": n}
    async with running(spec, extra_args=extra) as server:
        pool = Pool(HOST, server.port, hello=spec.hello)
        pusher = None
        try:
            await pool.open([spec.client_path(i) for i in range(n)], CONNECT_CONCURRENCY)
            if pool.failed or len(pool.clients) != n:
                raise CheckFailed(f"{spec.name}: {pool.failed} of {n} connections failed")
            pusher = await asyncio.create_subprocess_exec(
                *HELPER_ARGV, *(sys.executable, "-m", "bench.pusher"),
                *(str(server.port), str(server.rpc_port), str(args.receivers)),
                *(str(args.behind_rate), str(args.seconds), args.behind_api),
                cwd=str(ROOT),
                stdout=asyncio.subprocess.PIPE,
            )
            assert pusher.stdout is not None
            if (await pusher.stdout.readline()).strip() != b"ready":
                raise RuntimeError("pusher did not start")
            await server.wait_count(n + args.receivers)
            await asyncio.sleep(0.5)
            route, body = burst_request(1, SIZE)
            triggers, fanouts, frame_bytes = [], [], 0
            end = time.perf_counter() + args.seconds - 1.0
            while time.perf_counter() < end:
                done = pool.arm(frame_bytes or 1)
                t0 = time.perf_counter()
                triggers.append(t0)
                await server.post(route, body)
                last = await asyncio.wait_for(done, 30)
                fanouts.append((last - t0) * 1000)
                if not frame_bytes:
                    counts = await _settled_counts(pool)
                    if len(counts) != 1:
                        raise CheckFailed(f"{spec.name}: uneven broadcast {counts}")
                    frame_bytes = next(iter(counts))
                await asyncio.sleep(max(0.0, t0 + 1.0 - time.perf_counter()))
            out, _ = await pusher.communicate()
            rows = json.loads(out.splitlines()[-1])["pushes"]
            lost = sum(1 for _, lat, _ in rows if lat is None)
            if lost:
                raise CheckFailed(f"{spec.name}: {lost} unicast pushes never arrived")

            def near(at: float) -> bool:
                return any(0 <= at - t < WINDOW for t in triggers)

            lat = [r[1] for r in rows]
            behind = [r[1] for r in rows if near(r[0])]
            away = [r[1] for r in rows if not near(r[0])]
            result.update(
                pushes=len(rows),
                broadcasts=len(triggers),
                p50_ms=statistics.median(lat),
                p99_ms=pct(lat, 0.99),
                behind_p99_ms=pct(behind, 0.99),
                away_p99_ms=pct(away, 0.99),
                max_ms=max(lat),
                call_p99_ms=pct([r[2] for r in rows], 0.99),
                broadcast_ms=statistics.median(fanouts),
            )
        finally:
            if pusher is not None and pusher.returncode is None:
                pusher.kill()
                await pusher.wait()
            pool.close()
            await asyncio.sleep(0.2)
    return result


def configs(args: argparse.Namespace) -> list[tuple[Spec, list[str]]]:
    unsliced = dataclasses.replace(IM, name="im, one slice")
    extra = shlex.split(args.server_args)
    whole = ["--fanout-slice", "1000000", "--fanout-budget", "1000000"]
    out = [(IM, extra), (unsliced, [*extra, *whole])]
    if "base" in SPECS:
        out.append((SPECS["base"], extra))
    return out


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r:
            groups.setdefault(r["server"], []).append(r)
    out = []
    for name, rs in groups.items():
        med: dict[str, Any] = {"server": name, "runs": len(rs)}
        for key in rs[0]:
            if key not in med and isinstance(rs[0][key], float):
                med[key] = statistics.median(r[key] for r in rs)
        out.append(med)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | unicast p50 ms | p99 ms | p99 behind a broadcast | p99 away "
        "| push call p99 ms | broadcast -> last client ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['p50_ms']:.2f} | {r['p99_ms']:.1f} | {r['behind_p99_ms']:.1f} "
            f"| {r['away_p99_ms']:.1f} | {r['call_p99_ms']:.1f} | {r['broadcast_ms']:.0f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    n = int(args.n.split(",")[-1])
    for i in range(args.runs):
        for spec, extra in configs(args):
            try:
                r = await behind_session(spec, n, extra, args)
            except Exception as exc:
                r = {"server": spec.name, "n": n, "error": f"{type(exc).__name__}: {exc}"}
            r["run"] = i
            runs.append(r)
            print(f"run {i} {spec.name}: {r}", flush=True)
    return {"runs": runs, "summary": medians(runs)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("behind")
    g.add_argument("--receivers", type=int, default=20, help="behind: unicast receivers")
    g.add_argument("--behind-rate", type=float, default=300.0, help="behind: unicast pushes/s")
    g.add_argument("--seconds", type=float, default=20.0, help="behind: seconds of pushes")
    g.add_argument(
        "--behind-api", choices=("grpc", "http"), default="grpc", help="behind: push API"
    )


def main(args: argparse.Namespace, results: Path, versions: dict[str, str]) -> int:
    import uvloop

    result = uvloop.run(run(args))
    print(table(result["summary"]))
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"behind-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"command": "python -m bench " + " ".join(sys.argv[1:]), "versions": versions}
    out.write_text(json.dumps({"meta": meta, **result}, indent=1))
    print(f"wrote {out}")
    return 0
