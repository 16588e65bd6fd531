"""Abuse soak: what abusive clients cost a well-behaved one, against one live im.

A bystander (user ``bystander``, a raw-socket WebSocket) is pushed to over the
HTTP API (``POST /api/v1/push_user`` on keep-alive connections) at ``--push-rate``
for the whole run; each push carries its sequence number and send time, so every
phase gets push -> client latency p50/p99 and its missed pushes. Phases:

    quiet      bystander only: the baseline p99 and RSS
    fragment   clients sending one endless message of 1-byte and empty fragments
    slowloris  sockets dripping an upgrade request 1 byte/s, or sending nothing
    frames     upgraded clients sending pings and 10-byte binary frames flat out
    churn      connect -> upgrade -> close as fast as a few tasks can
    after      quiet again once the attackers left (after ``--settle``)

Attackers run in a niced child process (``bench.attackers``) on the load
generator's core. An abuse phase lasts ``--attack`` seconds plus the time the
server takes to answer the bystander again (capped by ``--recover-max``); a server
still stalled then is restarted for the next phase, and the result says so.

    python -m bench abuse
    python -m bench abuse --server-args "--idle-timeout 5 --header-timeout 5"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from im_plugins.json_codec import JsonCodec

from .attackers import KINDS
from .loadgen import WsClient, upgrade_request
from .servers import HOST, IM, LOADGEN_CPU, ROOT, SERVER_CPU, Running, core_busy_seconds, running
from .unicast import http_post

USER = "bystander"
PUSH_CONNECTIONS = 16  # keep-alive connections the backend pushes on
PUSH_TIMEOUT = 2.0  # a push not answered by then is dropped and its connection replaced
LATE = 0.1  # pushes slower than this (seconds) are listed in the result, up to LATE_KEPT
LATE_KEPT = 200
SAMPLE_EVERY = 0.5  # seconds between RSS / open-file samples of the server
#: targets: bystander p99 under abuse vs quiet, RSS after vs quiet
P99_RATIO_MAX = 2.0
RSS_AFTER_MAX = 1.10
CODEC = JsonCodec()


class Bystander(WsClient):
    """The well-behaved client: records when each pushed sequence number arrived."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.latency: dict[int, float] = {}  # seq -> seconds from push to arrival
        self.newest_sent = 0.0  # send time of the newest push that arrived

    def on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode not in (0x1, 0x2):
            return
        now = time.perf_counter()
        seq, sent = CODEC.decode_push(payload)[1].split()
        self.latency[int(seq)] = now - float(sent)
        self.newest_sent = max(self.newest_sent, float(sent))


class Pusher:
    """The backend: ``rate`` pushes/s to the bystander over CONNECTIONS keep-alive
    connections. Each push carries its due time, so waiting for a free connection
    counts in its latency; one that finds none within PUSH_TIMEOUT (all stuck on a
    slow server) is missed, as is one whose request times out."""

    def __init__(self, server: Running, rate: float) -> None:
        self.server = server
        self.rate = rate
        self.path = f"{IM.api}/push_user"
        self.phase = "warmup"
        self.scheduled: dict[str, list[int]] = {}  # phase -> seqs due in it
        self.failures: dict[str, Counter[str]] = {}  # phase -> reason -> count
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        self.free = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.start = 0.0
        self.replied: dict[int, float] = {}  # seq -> seconds from due time to the API reply
        self.lag: dict[str, float] = {}  # phase -> the pusher's own worst lateness, s

    async def connect(self) -> None:
        self.free.put_nowait(await asyncio.open_connection(HOST, self.server.port))

    def fail(self, phase: str, reason: str) -> None:
        self.failures.setdefault(phase, Counter())[reason] += 1

    async def push(self, seq: int, phase: str, due: float) -> None:
        try:
            conn = await asyncio.wait_for(self.free.get(), PUSH_TIMEOUT)
        except TimeoutError:
            self.fail(phase, "no free connection")
            return
        body = orjson.dumps({"user": USER, "text": f"{seq} {due:.6f}"})
        try:
            status, _ = await asyncio.wait_for(http_post(*conn, self.path, body), PUSH_TIMEOUT)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            self.fail(phase, "timeout" if isinstance(exc, TimeoutError) else "error")
            conn[1].close()
            with contextlib.suppress(OSError, TimeoutError):  # a stalled server still accepts
                await asyncio.wait_for(self.connect(), PUSH_TIMEOUT)
            return
        self.free.put_nowait(conn)
        self.replied[seq] = time.perf_counter() - due
        if status != 200:
            self.fail(phase, f"http {status}")

    async def run(self, stop: asyncio.Event, seconds: float) -> None:
        """Push until ``stop`` is set or ``seconds`` have passed."""
        for _ in range(PUSH_CONNECTIONS):
            await self.connect()
        start = self.start = time.perf_counter()
        for seq in range(int(seconds * self.rate)):
            due = start + seq / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                break
            phase = self.phase
            # A late wake-up here is the load generator's delay, not the server's.
            self.lag[phase] = max(self.lag.get(phase, 0.0), time.perf_counter() - due)
            self.scheduled.setdefault(phase, []).append(seq)
            task = asyncio.ensure_future(self.push(seq, phase, due))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self.tasks), PUSH_TIMEOUT * 3)
        while not self.free.empty():
            self.free.get_nowait()[1].close()


def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of sorted ``values`` (None if empty)."""
    return values[min(len(values) - 1, int(len(values) * q))] if values else None


class Rig:
    """One server with its bystander and pusher; restarted if an abuse leaves it stalled."""

    def __init__(self, server: Running, args: argparse.Namespace) -> None:
        self.server = server
        self.args = args
        self.stop = asyncio.Event()
        self.pusher = Pusher(server, args.push_rate)
        self.bystander: Bystander | None = None
        self.runner: asyncio.Task[None] | None = None
        self.start_rss_mb = 0.0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        request = upgrade_request(HOST, self.server.port, f"/conn?token={USER}")
        _, self.bystander = await loop.create_connection(
            lambda: Bystander(request), HOST, self.server.port
        )
        if not await asyncio.wait_for(self.bystander.upgraded, 10):
            raise RuntimeError(f"bystander not upgraded: {self.bystander.outcome}")
        await self.server.wait_count(1)
        self.runner = asyncio.ensure_future(self.pusher.run(self.stop, self.args.max_seconds))
        await asyncio.sleep(1.0)  # let the server settle before a baseline
        self.start_rss_mb = round(self.server.rss_kb() / 1024, 1)

    async def recover(self, since: float, cap: float) -> float | None:
        """Seconds from ``since`` until a push sent after it arrived; None past ``cap``."""
        assert self.bystander is not None
        deadline = since + cap
        while time.perf_counter() < deadline:
            if self.bystander.newest_sent > since:
                return time.perf_counter() - since
            await asyncio.sleep(0.05)
        return None

    async def close(self) -> dict[str, dict[str, Any]]:
        """Stop pushing; per phase: pushes due, delivered, missed, p50/p99 and failures."""
        self.pusher.phase = "tail"
        await asyncio.sleep(PUSH_TIMEOUT)  # the last pushes' way to the bystander
        self.stop.set()
        if self.runner is not None:
            await self.runner
        assert self.bystander is not None
        self.bystander.abort()
        out = {}
        pusher, latency = self.pusher, self.bystander.latency
        for phase, seqs in pusher.scheduled.items():
            got = sorted(latency[s] * 1000 for s in seqs if s in latency)
            # Where the slow ones were: [s since pushing began, ms to the API reply, ms to
            # the bystander] (None: never), to tell a stall from noise and API from socket.
            late = [
                [
                    round(s / pusher.rate, 2),
                    round(pusher.replied[s] * 1000, 1) if s in pusher.replied else None,
                    round(latency[s] * 1000, 1) if s in latency else None,
                ]
                for s in seqs
                if latency.get(s, LATE) >= LATE
            ]
            p50, p99 = quantile(got, 0.5), quantile(got, 0.99)
            out[phase] = {
                "pushes": len(seqs),
                "delivered": len(got),
                "missed": len(seqs) - len(got),
                "p50_ms": round(p50, 2) if p50 is not None else None,
                "p99_ms": round(p99, 2) if p99 is not None else None,
                "max_ms": round(got[-1], 2) if got else None,
                "push_failures": dict(pusher.failures.get(phase, {})),
                "loadgen_lag_max_ms": round(pusher.lag.get(phase, 0.0) * 1000, 1),
                "late": late[:LATE_KEPT],
                "bystander_outcome": self.bystander.outcome or "open",
            }
        return out


class Busy:
    """How busy the server was over a phase, and the rest of its core (other processes
    on a shared machine: a server starved by them looks idle and slow at once); the
    same for this process on the load generator's core."""

    def __init__(self, server: Running) -> None:
        self.server = server
        self.t0 = time.perf_counter()
        self.cpu0 = server.cpu_seconds()
        self.core0 = core_busy_seconds(SERVER_CPU)
        self.own0 = time.process_time()
        self.loadgen0 = core_busy_seconds(LOADGEN_CPU)

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        server = (self.server.cpu_seconds() - self.cpu0) / wall
        core = (core_busy_seconds(SERVER_CPU) - self.core0) / wall
        own = (time.process_time() - self.own0) / wall
        loadgen = (core_busy_seconds(LOADGEN_CPU) - self.loadgen0) / wall
        return {
            "server_busy": round(server, 2),
            "others_on_core": round(max(0.0, core - server), 2),
            "loadgen_busy": round(own, 2),
            "others_on_loadgen_core": round(max(0.0, loadgen - own), 2),
        }


class Sampler:
    """Peak RSS and open files of the server while a phase runs."""

    def __init__(self, server: Running) -> None:
        self.server = server
        self.rss_peak = self.fds_peak = 0
        self.task = asyncio.ensure_future(self._run())

    def _sample(self) -> None:
        self.rss_peak = max(self.rss_peak, self.server.rss_kb())
        self.fds_peak = max(self.fds_peak, len(os.listdir(f"/proc/{self.server.pid}/fd")))

    async def _run(self) -> None:
        for _ in range(100_000):  # cancelled at the phase's end
            self._sample()
            await asyncio.sleep(SAMPLE_EVERY)

    def stop(self) -> dict[str, Any]:
        self.task.cancel()
        self._sample()
        return {"rss_peak_mb": round(self.rss_peak / 1024, 1), "fds_peak": self.fds_peak}


async def attack(rig: Rig, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one attacker process; label pushes with ``kind`` from its start to recovery."""
    clients = {
        "fragment": args.fragment_clients,
        "slowloris": args.slowloris_sockets,
        "frames": args.flood_clients,
        "churn": args.churn_tasks,
    }[kind]
    argv = ["nice", "-n", "19", sys.executable, "-m", "bench.attackers", kind]
    argv += [
        "--port",
        str(rig.server.port),
        "--seconds",
        str(args.attack),
        "--clients",
        str(clients),
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    report: dict[str, Any] = {}
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"start":
            raise RuntimeError(f"attacker {kind} did not start: {line!r}")
        rig.pusher.phase = kind
        sampler = Sampler(rig.server)
        busy, t0 = Busy(rig.server), time.perf_counter()
        report = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), args.attack + 60))
        attack_end = time.perf_counter()
        recovery = await rig.recover(attack_end, args.recover_max)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return {
        "attack_s": round(attack_end - t0, 1),
        "recovery_s": round(recovery, 2) if recovery is not None else None,
        **busy.read(),
        "rss_mb": round(rig.server.rss_kb() / 1024, 1),
        **sampler.stop(),
        "attackers": report,
    }


async def quiet(rig: Rig, phase: str, seconds: float) -> dict[str, Any]:
    rig.pusher.phase = phase
    sampler, busy = Sampler(rig.server), Busy(rig.server)
    await asyncio.sleep(seconds)
    return {
        **busy.read(),
        "rss_mb": round(rig.server.rss_kb() / 1024, 1),
        **sampler.stop(),
    }


async def abuse_session(args: argparse.Namespace) -> dict[str, Any]:
    extra = shlex.split(args.server_args)
    attacks = [k for k in args.attacks.split(",") if k]
    phases: dict[str, dict[str, Any]] = {}
    restarts = 0
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(running(IM, extra_args=extra))
        rig = Rig(server, args)
        await rig.start()
        phases["quiet"] = await quiet(rig, "quiet", args.quiet)
        for kind in attacks:
            phases[kind] = await attack(rig, kind, args)
            if phases[kind]["recovery_s"] is None:  # still stalled: the next phase gets a fresh one
                phases[kind]["restarted_after"] = True
                rig.pusher.phase = "stalled"
                for phase, stats in (await rig.close()).items():
                    phases.setdefault(phase, {}).update(stats)
                await stack.aclose()
                restarts += 1
                server = await stack.enter_async_context(running(IM, extra_args=extra))
                rig = Rig(server, args)
                await rig.start()
        rig.pusher.phase = "settle"
        await asyncio.sleep(args.settle)
        phases["after"] = await quiet(rig, "after", args.after)
        for phase, stats in (await rig.close()).items():
            phases.setdefault(phase, {}).update(stats)
    for label in ("warmup", "settle", "tail"):  # pushes between phases: not counted
        phases.pop(label, None)
    # RSS after is judged against the same server's quiet RSS, or if a stall had it
    # restarted, against the restarted server's RSS once it had started.
    phases["after"]["baseline_rss_mb"] = rig.start_rss_mb if restarts else phases["quiet"]["rss_mb"]
    return {"phases": phases, "restarts": restarts}


def judge(phases: dict[str, dict[str, Any]], attacks: list[str]) -> dict[str, Any]:
    """The targets: p99 under each abuse <= 2x quiet with nothing missed; RSS after <= quiet."""
    base_p99 = phases["quiet"].get("p99_ms")
    out: dict[str, Any] = {}
    for kind in ["quiet", *attacks, "after"]:
        p = phases.get(kind, {})
        ratio = p["p99_ms"] / base_p99 if base_p99 and p.get("p99_ms") is not None else None
        p["p99_ratio"] = round(ratio, 2) if ratio is not None else None
        if kind in attacks:
            out[f"{kind}_p99"] = bool(
                ratio is not None and ratio <= P99_RATIO_MAX and p.get("missed") == 0
            )
    after = phases.get("after", {})
    if after.get("baseline_rss_mb") and after.get("rss_mb"):
        out["rss_after"] = after["rss_mb"] <= after["baseline_rss_mb"] * RSS_AFTER_MAX
    return out


def outcome_text(p: dict[str, Any]) -> str:
    rep = p.get("attackers")
    if not rep:
        return "-"
    groups = rep.get("groups") or {"": rep["outcomes"]}
    parts = [
        (f"{name}: " if name else "") + ", ".join(f"{n} {what}" for what, n in counts.items())
        for name, counts in groups.items()
    ]
    if rep.get("closed_after_s") is not None:
        parts.append(f"closed after {rep['closed_after_s']} s (median)")
    if "connects_per_s" in rep:
        parts.insert(0, f"{rep['connects_per_s']:,.0f} upgrades/s")
    if p.get("recovery_s") is None:
        parts.append("server stalled: restarted")
    elif p["recovery_s"] > 1:
        parts.append(f"server answered again {p['recovery_s']} s after the attack")
    return "; ".join(parts)


def table(phases: dict[str, dict[str, Any]], attacks: list[str]) -> str:
    head = ["phase", "pushes ok/due", "p50 ms", "p99 ms", "p99 / quiet", "RSS MB (peak)"]
    head += ["server CPU (others)", "attackers"]
    rows = [head, ["---"] * len(head)]

    def num(v: Any, fmt: str = "{:,.2f}") -> str:
        return fmt.format(v) if v is not None else "-"

    for kind in ["quiet", *attacks, "after"]:
        p = phases.get(kind)
        if not p:
            continue
        rows.append(
            [
                kind,
                f"{p.get('delivered', 0):,}/{p.get('pushes', 0):,}",
                num(p.get("p50_ms")),
                num(p.get("p99_ms")),
                num(p.get("p99_ratio"), "{:.2f}x"),
                f"{num(p.get('rss_mb'), '{:.1f}')} ({num(p.get('rss_peak_mb'), '{:.1f}')})",
                f"{num(p.get('server_busy'))} ({num(p.get('others_on_core'))})",
                outcome_text(p),
            ]
        )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("abuse")
    g.add_argument("--attacks", default=",".join(KINDS), help="abuse phases, in order")
    g.add_argument("--quiet", type=float, default=20.0, help="seconds of the quiet phase")
    g.add_argument("--attack", type=float, default=20.0, help="seconds of each abuse")
    g.add_argument("--after", type=float, default=20.0, help="seconds of the after phase")
    g.add_argument("--settle", type=float, default=5.0, help="seconds before the after phase")
    g.add_argument(
        "--recover-max",
        type=float,
        default=45.0,
        help="seconds a server may stay stalled after an abuse before it is restarted",
    )
    g.add_argument("--push-rate", type=float, default=100.0, help="pushes/s to the bystander")
    g.add_argument("--fragment-clients", type=int, default=4)
    g.add_argument("--slowloris-sockets", type=int, default=300)
    g.add_argument("--flood-clients", type=int, default=4)
    g.add_argument("--churn-tasks", type=int, default=4)


def main(args: argparse.Namespace, results: Path, versions: dict[str, str]) -> int:
    import uvloop

    attacks = [k for k in args.attacks.split(",") if k]
    if unknown := set(attacks) - set(KINDS):
        raise SystemExit(f"unknown attacks: {', '.join(sorted(unknown))}")
    # Bounds every loop of the run: phases, attack start-up and recoveries, with margin.
    args.max_seconds = args.quiet + args.settle + args.after + 30
    args.max_seconds += len(attacks) * (args.attack + args.recover_max + 90)
    t0 = time.monotonic()
    result = uvloop.run(abuse_session(args))
    phases = result["phases"]
    result["targets"] = judge(phases, attacks)
    print(table(phases, attacks))
    print(
        "targets:",
        ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in result["targets"].items()),
    )
    after = phases["after"]
    where = f" (a fresh server: restarted {result['restarts']}x)" if result["restarts"] else ""
    print(f"RSS after {after['rss_mb']} MB vs {after['baseline_rss_mb']} MB baseline{where}")
    took = time.monotonic() - t0
    print(f"took {took:.0f} s")
    meta = {
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "versions": versions,
        "cpus": {"server": 0, "loadgen": LOADGEN_CPU},
        "server_args": args.server_args,
        "push_rate": args.push_rate,
        "seconds": {
            "quiet": args.quiet,
            "attack": args.attack,
            "settle": args.settle,
            "after": args.after,
            "recover_max": args.recover_max,
            "took": round(took, 1),
        },
        "attackers": {
            "fragment_clients": args.fragment_clients,
            "slowloris_sockets": args.slowloris_sockets,
            "flood_clients": args.flood_clients,
            "churn_tasks": args.churn_tasks,
        },
    }
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"abuse-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, **result}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0
