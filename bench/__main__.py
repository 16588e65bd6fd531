"""``python -m bench SCENARIO``: run by hand, print a table, write JSON.

python -m bench all                      # every scenario, im and peers
python -m bench burst --n 10000 --runs 3
python -m bench fanout --servers im,im-metrics --runs 5   # the metrics plugin's cost
python -m bench fanout --servers im,base --base ../im-old  # against another tree
python -m bench memory --servers im,aiohttp
python -m bench unicast --modes grpc,http,grpc-stream,http-stream
python -m bench unicast --servers im --push-flags ack --server-args "--broker redis"
python -m bench scaling --servers im-w1,im-w2,im --n 10000 --m 300 --channels 8
python -m bench quiet --servers im-w1,im-w2 --n 10000 --m 1000   # CPU/delivery, readers paused
python -m bench unicast --servers base-w2,im-w2 --base ../im-old   # workers, two trees
python -m bench ack
python -m bench delivery --base ../im-old     # store / ack costs and logins per broker
python -m bench abuse --server-args "--idle-timeout 5 --header-timeout 5"
python -m bench soak                     # mixed delivery soak, two load cycles
python -m bench calls --delays 0,1,5,20  # 100 awaited Broadcast calls, --write-delay
python -m bench behind --base ../im-old  # unicast p99 while broadcasts to 10k happen
python -m bench c100k --connections 100000 --workers 6 --runs 1   # C100k over workers
python -m bench plot bench/results/all-*.json   # PNG for docs/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from . import abuse, behind, c100k, calls, delivery, soak
from .acks import ACK_SERVERS, ack_session
from .scenarios import session
from .servers import IM, IM_W1, IM_W1P, IM_W2, IM_W2P, LOADGEN_CPU, ROOT, SPECS
from .unicast import DEFAULT_MODES, RATE, USERS, parse_flags, unicast_session

RESULTS = ROOT / "bench" / "results"
SCENARIOS = {
    "burst": {"burst"},
    "latency": {"latency"},
    "fanout": {"burst", "latency"},
    "memory": {"memory"},
    "connect": {"connect"},
    "unicast": {"unicast"},
    "ack": {"ack"},
    "all": {"burst", "latency", "memory", "connect", "unicast", "ack"},
    # 1 vs 2 workers (docs/performance.md, "Workers: 1 vs 2")
    "scaling": {"burst", "latency", "connect", "unicast"},
    # the server's own CPU per delivery, clients not reading meanwhile (--m 500)
    "quiet": {"quiet"},
}
BROADCAST_PHASES = {"burst", "latency", "memory", "connect", "quiet"}
METRICS = (  # key, label, format, higher is better
    ("deliveries_per_s", "burst deliveries/s", "{:,.0f}", True),
    ("deliveries_per_cpu_s", "  burst deliveries per server CPU-second", "{:,.0f}", True),
    ("cpu_us_per_delivery", "  server CPU per delivery, µs", "{:,.3f}", False),
    ("machine_us_per_delivery", "  machine CPU per delivery (all processes), µs", "{:,.3f}", False),
    (
        "quiet_us_per_delivery",
        "server CPU per delivery, clients not reading meanwhile, µs",
        "{:,.4f}",
        False,
    ),
    (
        "quiet_machine_us_per_delivery",
        "  machine CPU per delivery, clients not reading meanwhile, µs",
        "{:,.4f}",
        False,
    ),
    ("quiet_late_ms", "  server CPU once they read again (should be ~0), ms", "{:,.1f}", False),
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
    (
        "latency_machine_cpu_ms",
        "  machine CPU, all processes, trigger -> last client, ms",
        "{:,.1f}",
        False,
    ),
    ("latency_machine_busy", "  machine cores busy meanwhile", "{:,.2f}", False),
    ("kb_per_conn", "KB / idle connection", "{:,.2f}", False),
    ("connect_per_s", "connections/s (validate hook)", "{:,.0f}", True),
    ("connect_per_cpu_s", "connections per server CPU-second", "{:,.0f}", True),
    ("uni_grpc_per_s", "unicast pushes/s, im gRPC PushUser (peers: HTTP)", "{:,.0f}", True),
    ("uni_grpc_server_us", "  server CPU per call, µs", "{:,.0f}", False),
    ("uni_grpc_paced_server_us", "  server CPU per call at the paced rate, µs", "{:,.0f}", False),
    ("uni_grpc_p50_ms", "  push -> client p50 at the paced rate, ms", "{:,.2f}", False),
    ("uni_grpc_p99_ms", "  push -> client p99 at the paced rate, ms", "{:,.2f}", False),
    ("uni_grpc_half_rate", "  half its own rate, pushes/s", "{:,.0f}", True),
    ("uni_grpc_half_p99_ms", "  push -> client p99 at half its own rate, ms", "{:,.2f}", False),
    ("uni_http_per_s", "unicast pushes/s, HTTP push_user", "{:,.0f}", True),
    ("uni_http_server_us", "  server CPU per call, µs", "{:,.0f}", False),
    ("uni_http_paced_server_us", "  server CPU per call at the paced rate, µs", "{:,.0f}", False),
    ("uni_http_p50_ms", "  push -> client p50 at the paced rate, ms", "{:,.2f}", False),
    ("uni_http_p99_ms", "  push -> client p99 at the paced rate, ms", "{:,.2f}", False),
    ("uni_grpc-stream_per_s", "unicast pushes/s, im gRPC PushStream", "{:,.0f}", True),
    ("uni_grpc-stream_p99_ms", "  push -> client p99 at the paced rate, ms", "{:,.2f}", False),
    ("uni_http-stream_per_s", "unicast pushes/s, im HTTP push_stream", "{:,.0f}", True),
    ("uni_http-stream_p99_ms", "  push -> client p99 at the paced rate, ms", "{:,.2f}", False),
    ("ack_p50_ms", "ack round trip p50 (backend -> client ack -> backend), ms", "{:,.2f}", False),
    ("ack_p99_ms", "ack round trip p99, ms", "{:,.2f}", False),
)
#: im's gRPC rows are compared with the peers' HTTP numbers (peers have no gRPC API)
PEER_METRIC = {
    "uni_grpc_per_s": "uni_http_per_s",
    "uni_grpc_p50_ms": "uni_http_p50_ms",
    "uni_grpc_p99_ms": "uni_http_p99_ms",
}
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
        metrics = {k for r in rs for k, v in r.items() if isinstance(v, int | float)}
        for metric in sorted(metrics - {"n", "run"}):
            values = [r[metric] for r in rs if metric in r]
            if values:
                med[metric] = statistics.median(values)
        out[key] = med
    return out


def table(summary: dict[str, dict[str, Any]], servers: list[str], ns: list[int]) -> str:
    servers = [s for s in servers if any(v["server"] == s for v in summary.values())]
    peers = [s for s in servers if s != "im" and not s.startswith(("im-w", "base-w"))]
    # two workers against one, and this tree's workers against the base tree's
    pairs = [
        (num, den)
        for num, den in (
            ("im-w2", "im-w1"),
            ("im-w2p", "im-w1p"),
            ("base-w2", "base-w1"),
            ("base-w2p", "base-w1p"),
            ("im-w2", "base-w2"),
            ("im-w2p", "base-w2p"),
        )
        if num in servers and den in servers
    ]
    head = ["N", "measure", *servers, *(f"im/{p}" for p in peers)]
    head += [f"{num}/{den}" for num, den in pairs]
    rows = [head]
    for n in ns:
        for metric, label, fmt, _ in METRICS:
            cells = [summary.get(f"{s}@{n}", {}).get(metric) for s in servers]
            if all(c is None for c in cells):
                continue
            row = [f"{n:,}", label, *(fmt.format(c) if c is not None else "-" for c in cells)]
            im = summary.get(f"im@{n}", {}).get(metric)
            for p in peers:
                other = summary.get(f"{p}@{n}", {}).get(PEER_METRIC.get(metric, metric))
                row.append(f"{im / other:.2f}x" if im and other else "-")
            for num, den in pairs:
                a, b = (summary.get(f"{s}@{n}", {}).get(metric) for s in (num, den))
                row.append(f"{a / b:.2f}x" if a and b else "-")
            rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in [rows[0], ["---"] * len(head), *rows[1:]])


def plan(args: argparse.Namespace) -> list[tuple[str, list[int], list[str]]]:
    """(kind, client counts, servers) groups, in the order they run each round."""
    phases = SCENARIOS[args.scenario]
    servers = args.servers.split(",")
    groups = []
    if phases & BROADCAST_PHASES:
        groups.append(("broadcast", [int(n) for n in args.n.split(",")], servers))
    if "unicast" in phases:
        groups.append(("unicast", [args.users], servers))
    if "ack" in phases:
        groups.append(("ack", [1], [s for s in servers if s in ACK_SERVERS]))
    return groups


async def one(args: argparse.Namespace, kind: str, name: str, n: int) -> dict[str, Any]:
    spec = SPECS[name]
    extra = shlex.split(args.server_args) if spec.im else []
    if kind == "unicast":
        modes, flags = tuple(args.modes.split(",")), parse_flags(args.push_flags)
        return await unicast_session(
            spec, n, modes, rate=args.rate, extra_args=extra, flags=flags, channels=args.channels
        )
    if kind == "ack":
        return await ack_session(spec)
    phases = SCENARIOS[args.scenario] & BROADCAST_PHASES
    return await session(spec, n, args.m or BURST_M.get(name, 100), phases, extra)


async def run(args: argparse.Namespace) -> int:
    groups = plan(args)
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        for kind, ns, servers in groups:
            for n in ns:
                for name in servers:  # im and its peers interleaved: same conditions
                    t0 = time.monotonic()
                    try:
                        r = await one(args, kind, name, n)
                    except Exception as exc:
                        r = {"server": name, "n": n, "error": f"{type(exc).__name__}: {exc}"}
                    r["run"] = i
                    runs.append(r)
                    shown = {k: v for k, v in r.items() if k != "latency_samples_ms"}
                    took = time.monotonic() - t0
                    print(f"run {i} {name} N={n} ({took:.0f}s): {shown}", flush=True)
    servers = args.servers.split(",")
    ns = list(dict.fromkeys(n for _, group_ns, _ in groups for n in group_ns))
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
        "unicast": {
            "users": args.users,
            "paced_rate": args.rate,
            "modes": args.modes,
            "push_flags": args.push_flags,
        },
        "server_args": args.server_args,
    }
    out.write_text(json.dumps({"meta": meta, "runs": runs, "summary": summary}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    own = ["abuse", "soak", "delivery", "calls", "behind", "c100k", "plot"]  # scenarios with a main
    parser.add_argument("scenario", choices=[*SCENARIOS, *own])
    parser.add_argument("files", nargs="*", help="plot: result JSON files")
    parser.add_argument("--servers", default="im,aiohttp,socketio")
    parser.add_argument("--n", default="2000,10000", help="client counts, comma separated")
    parser.add_argument("--m", type=int, default=0, help="messages per burst (default per server)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--users", type=int, default=USERS, help="unicast: connected users")
    parser.add_argument(
        "--modes", help=f"unicast modes (default {DEFAULT_MODES}; delivery: {delivery.MODES})"
    )
    parser.add_argument("--rate", type=float, default=RATE, help="unicast: paced pushes/s")
    parser.add_argument(
        "--channels", type=int, default=1, help="unicast: gRPC channels (TCP connections)"
    )
    parser.add_argument("--push-flags", default="", help='unicast: e.g. "ack" or "ack,store"')
    parser.add_argument("--server-args", default="", help='extra im-run flags, e.g. "--store"')
    abuse.add_arguments(parser)
    soak.add_arguments(parser)
    delivery.add_arguments(parser)
    calls.add_arguments(parser)
    behind.add_arguments(parser)
    c100k.add_arguments(parser)
    args = parser.parse_args()
    if args.scenario == "plot":
        from .plot import plot

        return plot([Path(f) for f in args.files])
    os.sched_setaffinity(0, {LOADGEN_CPU})
    if args.base:  # another tree of im, as the server "base" (delivery has its own)
        root = Path(args.base).resolve()
        SPECS["base"] = dataclasses.replace(IM, name="base", root=root)
        for workers in (IM_W1, IM_W2, IM_W1P, IM_W2P):  # base-w1 ...: its ``--workers`` forms
            name = "base-" + workers.name.removeprefix("im-")
            SPECS[name] = dataclasses.replace(workers, name=name, root=root)
    if args.scenario == "abuse":
        return abuse.main(args, RESULTS, versions())
    if args.scenario == "soak":
        return soak.main(args, RESULTS, versions())
    if args.scenario == "behind":
        return behind.main(args, RESULTS, versions())
    if args.scenario == "c100k":
        return c100k.main(args, RESULTS, versions())
    if args.scenario == "calls":
        return calls.main(args, RESULTS, versions())
    if args.scenario == "delivery":
        args.modes = args.modes or ",".join(delivery.MODES)
        return delivery.main(args, RESULTS, versions())
    args.modes = args.modes or ",".join(DEFAULT_MODES)
    import uvloop

    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
