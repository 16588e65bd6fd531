"""One session per (server, N, run): connect N idle clients, then measure.

Phases, in order, each recorded when its scenario is selected:
    connect  - connection setup rate (upgrade incl. the validate hook), conns/s
    memory   - server RSS growth per idle connection, KB
    latency  - one broadcast -> last of N clients, ms (median of ``LATENCY_SAMPLES``);
               for ``im-run --workers`` also trigger -> the last worker's writes done
               (the load generator at nice ``LOADGEN_NICE`` meanwhile)
    burst    - M x SIZE broadcast burst, deliveries/s = N x M / (trigger -> last byte),
               and per server CPU-second
Every broadcast is checked: each client got exactly the same whole number of frames.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from .loadgen import Pool
from .servers import HOST, Running, Spec, burst_request, machine_busy_seconds, running

LATENCY_SAMPLES = 5
#: the load generator's niceness while it times a broadcast of ``im-run --workers``
LOADGEN_NICE = 19
CONNECT_CONCURRENCY = 64
SIZE = 64


class CheckFailed(Exception):
    """A client did not get exactly the frames the server was asked to send."""


async def _broadcast(server: Running, pool: Pool, m: int, frame_bytes: int) -> float:
    """Trigger ``m`` broadcasts; return seconds from trigger to last byte at the last client."""
    expect = m * frame_bytes if frame_bytes else 1
    route, body = burst_request(m, SIZE)
    done = pool.arm(expect)
    t0 = server.triggered = time.perf_counter()
    await server.post(route, body)
    timeout = max(30.0, len(pool.clients) * m / 2000)
    try:
        t1 = await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise CheckFailed(
            f"{server.spec.name}: {pool.finished}/{pool.target} clients done after {timeout}s"
        ) from None
    return t1 - t0


async def _quiet(server: Running, idle_per_s: float, limit: float = 20.0) -> float:
    """Wait until the server has stopped working (under 2 ms of CPU beyond its idle
    rate in 50 ms); its CPU seconds then."""
    before = server.run_seconds()
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
        now = server.run_seconds()
        if now - before < 0.002 + idle_per_s * 0.05:
            return now
        before = now
    raise CheckFailed(f"{server.spec.name}: still busy after {limit}s")


async def _settled_counts(pool: Pool) -> dict[int, int]:
    await asyncio.sleep(0.3)  # let stragglers (extra frames) arrive before checking
    return pool.counts()


async def session(
    spec: Spec, n: int, m: int, phases: set[str], extra_args: Sequence[str] = ()
) -> dict[str, Any]:
    result: dict[str, Any] = {"server": spec.name, "n": n}
    async with running(spec, extra_args=extra_args) as server:
        await asyncio.sleep(0.5)
        rss0 = server.rss_kb()
        pool = Pool(HOST, server.port, hello=spec.hello)
        try:
            cpu0, t0, own0 = server.cpu_seconds(), time.perf_counter(), time.process_time()
            rate = await pool.open(
                [spec.client_path(i) for i in range(n)], concurrency=CONNECT_CONCURRENCY
            )
            if pool.failed or len(pool.clients) != n:
                raise CheckFailed(f"{spec.name}: {pool.failed} of {n} connections failed")
            await server.wait_count(n)
            if "connect" in phases:
                result["connect_per_s"] = rate
                # how busy the server core was: under ~0.9 the load generator was the limit
                cpu = server.cpu_seconds() - cpu0
                wall = time.perf_counter() - t0
                result["connect_server_busy"] = round(cpu / wall, 2)
                result["connect_loadgen_busy"] = round((time.process_time() - own0) / wall, 2)
                # the server's cost, robust to a slow load generator: conns per CPU second
                result["connect_per_cpu_s"] = n / cpu if cpu else 0.0
            await asyncio.sleep(1.0)
            gc.collect()
            if "memory" in phases:
                result["kb_per_conn"] = (server.rss_kb() - rss0) / n
                result["rss_kb"] = server.rss_kb()
            # One broadcast first: it tells the frame size (the bytes every client got).
            await _broadcast(server, pool, 1, 0)
            counts = await _settled_counts(pool)
            if len(counts) != 1:
                raise CheckFailed(f"{spec.name}: uneven first broadcast {counts}")
            frame_bytes = next(iter(counts))
            result["frame_bytes"] = frame_bytes
            if "latency" in phases:
                samples, flushes, fanouts, machine = [], [], [], []
                if spec.probe_dir:  # workers share the cores with this process: it
                    # yields to them, so their stamps show the server's part alone
                    os.setpriority(os.PRIO_PROCESS, 0, LOADGEN_NICE)
                for _ in range(LATENCY_SAMPLES):
                    busy0 = machine_busy_seconds()
                    samples.append(await _broadcast(server, pool, 1, frame_bytes) * 1000)
                    # every process's CPU until the last client read it (kernel
                    # included): what two cores share, whichever way it is split
                    machine.append((machine_busy_seconds() - busy0) * 1000)
                    counts = await _settled_counts(pool)
                    if counts != {frame_bytes: n}:
                        raise CheckFailed(f"{spec.name}: latency broadcast got {counts}")
                    if spec.probe:  # where the time went: the server's part of it
                        written, fanout = server.probe_reading()
                        flushes.append(written)
                        fanouts.append(fanout)
                    elif spec.probe_dir:  # every worker's share written
                        ends = server.probe_ends()
                        fresh = [(e, c) for e, c in ends if e > server.triggered]
                        if sum(c for _, c in fresh) != n:
                            raise CheckFailed(f"{spec.name}: workers' stamps {ends}")
                        flushes.append((max(e for e, _ in fresh) - server.triggered) * 1000)
                        result.setdefault("worker_flush_ms", []).append(
                            sorted(round((e - server.triggered) * 1000, 1) for e, _ in fresh)
                        )
                os.setpriority(os.PRIO_PROCESS, 0, 0)
                if flushes:
                    result["server_flush_ms"] = statistics.median(flushes)
                if fanouts:
                    result["server_fanout_ms"] = statistics.median(fanouts)
                result["latency_ms"] = statistics.median(samples)
                result["latency_machine_cpu_ms"] = statistics.median(machine)
                result["latency_machine_busy"] = round(
                    statistics.median(c / w for c, w in zip(machine, samples, strict=True)), 2
                )
                result["latency_samples_ms"] = samples
            if "burst" in phases:
                by0, machine0 = server.cpu_by_process(), machine_busy_seconds()
                cpu0, t0 = server.cpu_seconds(), time.perf_counter()
                seconds = await _broadcast(server, pool, m, frame_bytes)
                counts = await _settled_counts(pool)
                if counts != {m * frame_bytes: n}:
                    raise CheckFailed(f"{spec.name}: burst counts {counts}")
                cpu = server.cpu_seconds() - cpu0
                by1 = server.cpu_by_process()
                # all the machine's CPU per delivery: robust to which process the
                # kernel's loopback work was charged to
                result["machine_us_per_delivery"] = (
                    (machine_busy_seconds() - machine0) / (n * m) * 1e6
                )
                # which process of a tree (workers, nats-server) took the CPU
                result["burst_cpu_by_process"] = {
                    k: round(v - by0.get(k, 0.0), 2) for k, v in by1.items()
                }
                result["m"] = m
                result["burst_server_busy"] = round(cpu / (time.perf_counter() - t0), 2)
                result["burst_s"] = seconds
                result["deliveries_per_s"] = n * m / seconds
                # the server's cost, robust to other load on its core (1/100 s ticks:
                # a long burst, --m 300 or more, keeps their rounding small)
                result["deliveries_per_cpu_s"] = n * m / cpu if cpu else 0.0
                result["cpu_us_per_delivery"] = cpu / (n * m) * 1e6
            if "quiet" in phases:
                result.update(await _quiet_burst(server, pool, m, frame_bytes))
        finally:
            pool.close()
            await asyncio.sleep(0.2)
    return result


async def _quiet_burst(server: Running, pool: Pool, m: int, frame_bytes: int) -> dict[str, Any]:
    """The server's own CPU per delivery of a burst, the clients' reads kept out of
    it: they stop reading, the ``m`` broadcasts land in their sockets' receive
    buffers (``m`` x the frame must fit: 500 x 70 B does on loopback's 128 KiB),
    the server's CPU is read once it is quiet again, then the clients read and
    are checked. With clients on the server's cores, each write otherwise wakes a
    reader that competes with the writer for its core."""
    n = len(pool.clients)
    for c in pool.clients:
        assert c.transport is not None
        c.transport.pause_reading()
    t0, idle0, machine_idle0 = time.perf_counter(), server.run_seconds(), machine_busy_seconds()
    await asyncio.sleep(1.0)
    took = time.perf_counter() - t0
    idle_per_s = (server.run_seconds() - idle0) / took
    machine_idle_per_s = (machine_busy_seconds() - machine_idle0) / took
    done = pool.arm(m * frame_bytes)
    route, body = burst_request(m, SIZE)
    start, cpu0, machine0 = time.perf_counter(), server.run_seconds(), machine_busy_seconds()
    await server.post(route, body)
    cpu1 = await _quiet(server, idle_per_s)
    took = time.perf_counter() - start
    busy = cpu1 - cpu0 - idle_per_s * took
    # The kernel's loopback work is charged to the writer, or to ksoftirqd when it
    # defers it: the machine's CPU (nothing else runs) counts it either way.
    machine = machine_busy_seconds() - machine0 - machine_idle_per_s * took
    resumed, cpu2 = time.perf_counter(), server.run_seconds()
    for c in pool.clients:
        assert c.transport is not None
        c.transport.resume_reading()
    await asyncio.wait_for(done, max(30.0, n * m / 2000))
    # What the server still wrote once the clients read again (a burst that did not
    # fit their buffers): it should be nothing but its idle rate.
    late = server.run_seconds() - cpu2 - idle_per_s * (time.perf_counter() - resumed)
    counts = await _settled_counts(pool)
    if counts != {m * frame_bytes: n}:
        raise CheckFailed(f"{server.spec.name}: quiet burst counts {counts}")
    return {
        "quiet_m": m,
        "quiet_us_per_delivery": busy / (n * m) * 1e6,
        "quiet_machine_us_per_delivery": machine / (n * m) * 1e6,
        "quiet_late_ms": late * 1000,
    }
