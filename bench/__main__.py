"""``python -m bench SCENARIO``: run by hand, print a table, write JSON.

python -m bench all                      # every scenario, im and peers, N = 2k and 10k
python -m bench burst --n 10000 --runs 3
python -m bench memory --servers im,aiohttp
python -m bench plot bench/results/all-*.json   # PNG for docs/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .acks import ack_session
from .scenarios import session
from .servers import LOADGEN_CPU, ROOT, SPECS

RESULTS = ROOT / "bench" / "results"
SCENARIOS = {
    "burst": {"burst"},
    "latency": {"latency"},
    "memory": {"memory"},
    "connect": {"connect"},
    "all": {"burst", "latency", "memory", "connect"},
    "ack": {"ack"},
}
METRICS = (  # key, label, format, higher is better
    ("deliveries_per_s", "burst deliveries/s", "{:,.0f}", True),
    ("latency_ms", "1 broadcast -> last client, ms", "{:,.1f}", False),
    (
        "server_fanout_ms",
        "  server: queued -> fanned out to every connection, ms",
        "{:,.1f}",
        False,
    ),
    (
        "server_flush_ms",
        "  server: queued -> all socket writes done, ms",
        "{:,.1f}",
        False,
    ),
    ("kb_per_conn", "KB / idle connection", "{:,.2f}", False),
    ("connect_per_s", "connections/s (validate hook)", "{:,.0f}", True),
    ("connect_per_cpu_s", "connections per server CPU-second", "{:,.0f}", True),
    ("ack_p50_ms", "ack round trip p50, ms", "{:,.2f}", False),
    ("ack_p99_ms", "ack round trip p99, ms", "{:,.2f}", False),
)
#: messages per burst; socket.io is ~100x slower, so fewer keep a run short
BURST_M = {"im": 100, "aiohttp": 100, "socketio": 10}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("im", "aiohttp", "uvloop", "python-socketio", "orjson"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "-"
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median of each metric per (server, n)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(f"{r['server']}@{r['n']}", []).append(r)
    out = {}
    for key, rs in groups.items():
        med: dict[str, Any] = {"server": rs[0]["server"], "n": rs[0]["n"], "runs": len(rs)}
        for metric, *_ in METRICS:
            values = [r[metric] for r in rs if metric in r]
            if values:
                med[metric] = statistics.median(values)
        out[key] = med
    return out


def table(summary: dict[str, dict[str, Any]], servers: list[str], ns: list[int]) -> str:
    peers = [s for s in servers if s != "im"]
    head = ["N", "measure", *servers, *(f"im/{p}" for p in peers)]
    rows = [head]
    for n in ns:
        for metric, label, fmt, _ in METRICS:
            cells = [summary.get(f"{s}@{n}", {}).get(metric) for s in servers]
            if all(c is None for c in cells):
                continue
            row = [f"{n:,}", label, *(fmt.format(c) if c is not None else "-" for c in cells)]
            im = summary.get(f"im@{n}", {}).get(metric)
            for p in peers:
                other = summary.get(f"{p}@{n}", {}).get(metric)
                row.append(f"{im / other:.2f}x" if im and other else "-")
            rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in [rows[0], ["---"] * len(head), *rows[1:]])


async def run(args: argparse.Namespace) -> int:
    phases = SCENARIOS[args.scenario]
    servers = args.servers.split(",")
    ns = [int(n) for n in args.n.split(",")]
    runs: list[dict[str, Any]] = []
    if "ack" in phases:
        servers, ns = ["im"], [1]
    for i in range(args.runs):
        for n in ns:
            for name in servers:  # im and its peers interleaved: same conditions
                m = args.m or BURST_M.get(name, 100)
                t0 = time.monotonic()
                try:
                    if "ack" in phases:
                        r = await ack_session()
                    else:
                        r = await session(SPECS[name], n, m, phases)
                except Exception as exc:
                    r = {"server": name, "n": n, "error": f"{type(exc).__name__}: {exc}"}
                r["run"] = i
                runs.append(r)
                shown = {k: v for k, v in r.items() if k != "latency_samples_ms"}
                print(f"run {i} {name} N={n} ({time.monotonic() - t0:.0f}s): {shown}", flush=True)
    summary = summarize([r for r in runs if "error" not in r])
    text = table(summary, servers, ns)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "versions": versions(),
        "cpus": {"server": 0, "loadgen": LOADGEN_CPU},
        "size": 64,
    }
    out.write_text(json.dumps({"meta": meta, "runs": runs, "summary": summary}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "plot"])
    parser.add_argument("files", nargs="*", help="plot: result JSON files")
    parser.add_argument("--servers", default="im,aiohttp,socketio")
    parser.add_argument("--n", default="2000,10000", help="client counts, comma separated")
    parser.add_argument("--m", type=int, default=0, help="messages per burst (default per server)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.scenario == "plot":
        from .plot import plot

        return plot([Path(f) for f in args.files])
    os.sched_setaffinity(0, {LOADGEN_CPU})
    import uvloop

    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
