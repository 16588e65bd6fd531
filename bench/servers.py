"""The servers under test: how to start each, reach its clients, and trigger it.

Every server runs in its own process pinned to ``SERVER_CPU``, except ``im-w1`` /
``im-w2`` (``im-run --workers N``), which may use every core: their CPU and memory
are summed over the process tree (supervisor, workers, nats-server). The harness drives
each one over HTTP the way a backend would: im through its push API (``/api/v1``),
each peer through the same routes without the prefix (``bench/peers``):

    GET  stats        -> {"connections": N}
    POST broadcast    {"data_b64"}                    one message to every client
    POST push_stream  NDJSON {"all": true, "data_b64"}  M broadcasts in one request
    POST push_user    {"user", "data_b64"}            one message to one user
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from .loadgen import client_frame

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
LOADGEN_CPU = 1
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Spec:
    name: str
    #: command line for (HTTP port, gRPC port)
    argv: Callable[[int, int], list[str]]
    #: the WebSocket path of client ``i`` (its user id is ``u{i}``)
    client_path: Callable[[int], str]
    #: prefix of the push routes (stats, broadcast, push_stream, push_user)
    api: str = ""
    hello: bytes = b""
    env: dict[str, str] = field(default_factory=dict)
    #: im itself (its push API and codecs), from whichever tree ``root`` holds
    im: bool = False
    #: the source tree the server runs from (its cwd and PYTHONPATH): another
    #: checkout of im compares two versions in one run
    root: Path = ROOT
    #: a path the harness GETs every ``SCRAPE_EVERY`` seconds while the server runs,
    #: as Prometheus would (``/metrics`` of ``im-metrics``)
    scrape: str = ""
    #: pinned to ``SERVER_CPU``; False lets the server use every core (workers)
    pinned: bool = True
    #: ``bench.probe_plugin`` loaded: one process stamps its broadcasts' flushes
    probe: bool = False
    #: ``bench.probe_plugin`` in ``BENCH_PROBE_DIR`` mode: every worker stamps when
    #: its share of a broadcast is written (``Running.probe_ends``)
    probe_dir: bool = False
    #: the ``stats`` field that counts connected clients (all workers': "online_connections")
    count_field: str = "connections"
    #: nodes (workers) to wait for in ``GET nodes`` before clients connect: with one
    #: still starting, the kernel would hand every connection to the others
    nodes: int = 0
    #: workers pinned one per core (worker i on CPU i mod cores) once they listen:
    #: unpinned, the scheduler may pull a worker onto the load generator's core
    pin_workers: bool = False


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


IM = Spec(
    name="im",
    argv=lambda port, rpc: _py(
        *("-m", "im_core.cli", "--host", HOST, "--http-port", str(port)),
        *("--rpc-port", str(rpc), "--heartbeat-interval", "3600", "--log-level", "WARNING"),
        *("--plugin", "bench.probe_plugin"),
    ),
    client_path=lambda i: f"/conn?token=u{i}",
    api="/api/v1",
    # Measure the built-in token_auth validate hook, whatever plugins are installed.
    env={"IM_DISABLE_PLUGIN_AUTOLOAD": "1"},
    im=True,
    probe=True,
)
AIOHTTP = Spec(
    name="aiohttp",
    argv=lambda port, rpc: _py("-m", "bench.peers.aiohttp_peer", str(port)),
    client_path=lambda i: f"/ws?user=u{i}",
)
SOCKETIO = Spec(
    name="socketio",
    argv=lambda port, rpc: _py("-m", "bench.peers.socketio_peer", str(port)),
    client_path=lambda i: f"/socket.io/?EIO=4&transport=websocket&user=u{i}",
    hello=client_frame(0x1, b"40"),
)
#: im with the prometheus plugin, scraped while it runs: the plugin's cost
#: (``--servers im,im-metrics``; ``--base`` adds another tree as ``base``)
IM_METRICS = dataclasses.replace(
    IM,
    name="im-metrics",
    argv=lambda port, rpc: [*IM.argv(port, rpc), "--plugin", "prometheus"],
    scrape="/metrics",
)


def _workers(count: int, pin: bool = False) -> Spec:
    """``im-run --workers count`` over its embedded NATS, unpinned. The probe plugin
    runs in its per-worker mode: each worker stamps when its share of a broadcast is
    written, so the server's part of a broadcast is trigger -> the last worker's
    stamp. Clients are counted over all workers (the broker's
    ``online_connections``): ``stats`` is answered by whichever worker gets it."""
    return dataclasses.replace(
        IM,
        name=f"im-w{count}" + ("p" if pin else ""),
        argv=lambda port, rpc: _py(
            *("-m", "im_core.cli", "--host", HOST, "--http-port", str(port)),
            *("--rpc-port", str(rpc), "--heartbeat-interval", "3600", "--log-level", "WARNING"),
            *("--workers", str(count), "--plugin", "bench.probe_plugin"),
        ),
        pinned=False,
        probe=False,
        probe_dir=True,
        count_field="online_connections",
        nodes=count,
        pin_workers=pin,
    )


#: the same supervisor and broker, one worker or two: the worker count is the only
#: difference (``--servers im-w1,im-w2``; plain ``im`` is one node, memory broker)
IM_W1, IM_W2 = _workers(1), _workers(2)
#: the same, each worker pinned to its own core (``im-w1p``: the worker on CPU 0)
IM_W1P, IM_W2P = _workers(1, pin=True), _workers(2, pin=True)
SPECS = {
    s.name: s for s in (IM, IM_METRICS, IM_W1, IM_W2, IM_W1P, IM_W2P, AIOHTTP, SOCKETIO)
}
#: seconds between scrapes of a spec with ``scrape`` (Prometheus' default is 15 s)
SCRAPE_EVERY = 1.0


def _helper_argv() -> list[str]:
    """How a backend-side helper process (a caller, a pusher) is started: on the load
    generator's core, but ahead of it (real-time priority when allowed), so that
    reading N sockets after a broadcast does not delay the helper's own calls and
    clock readings."""
    pin = ["taskset", "-c", str(LOADGEN_CPU)]
    if os.geteuid() == 0 and shutil.which("chrt"):
        return ["chrt", "-f", "10", *pin]
    return pin


HELPER_ARGV = _helper_argv()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_seconds(pid: int) -> float:
    """Seconds every thread of ``pid`` has run on a CPU so far, from ``schedstat``
    (nanoseconds, where ``stat`` counts 10 ms ticks)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"{task.path}/schedstat") as fh:
                total += int(fh.read().split()[0])
    return total / 1e9


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a scan of /proc: no children file needed)."""
    parent: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError):  # gone meanwhile
            continue
        parent.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parent.get(p, ()))
    return found


def pin_workers(supervisor: int) -> None:
    """Pin each worker of ``im-run --workers`` (the supervisor's Python children) to
    its own core, in start order; the supervisor and nats-server keep every core."""
    cores = list(range(os.cpu_count() or 1))  # all: the harness itself is pinned
    workers = []
    for p in tree(supervisor):
        with contextlib.suppress(OSError), open(f"/proc/{p}/comm") as fh:
            if p != supervisor and fh.read().strip().startswith("python"):
                workers.append(p)
    for i, p in enumerate(sorted(workers)):
        os.sched_setaffinity(p, {cores[i % len(cores)]})


def machine_busy_seconds() -> float:
    """CPU time of every process and interrupt on the machine so far (``/proc/stat``):
    the load generator's reads and the kernel's loopback work included, whichever
    process a tick charged them to."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu_by_process(pid: int) -> dict[str, float]:
    """CPU time of each process of ``pid``'s tree, keyed ``"<pid> <command>"``, and
    its write system calls (``"<pid> <command> writes"``)."""
    out = {}
    for p in tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/comm") as fh:
                name = f"{p} {fh.read().strip()}"
            out[name] = cpu_seconds(p)
            with open(f"/proc/{p}/io") as fh:  # write system calls (all fds)
                io = dict(line.split(": ") for line in fh.read().splitlines())
            out[name + " writes"] = float(io["syscw"])
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live descendants (supervisor, workers, broker)."""
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def tree_rss_kb(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_kb(p)
    return total


def core_busy_seconds(cpu: int) -> float:
    """CPU time core ``cpu`` spent on anything but idle and iowait so far (all processes)."""
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(t) for t in line.split()[1:]]
                return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def payload(i: int, size: int) -> bytes:
    """``size`` ASCII bytes, distinct per message, same length for every ``i``."""
    return f"{i:08d}".encode().ljust(size, b"x")[:size]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def burst_request(m: int, size: int) -> tuple[str, bytes]:
    """(route, body) a backend sends to broadcast ``m`` messages of ``size`` bytes:
    one ``broadcast`` call for one message, one NDJSON ``push_stream`` for a burst."""
    if m == 1:
        return "broadcast", orjson.dumps({"data_b64": b64(payload(0, size))})
    lines = (orjson.dumps({"all": True, "data_b64": b64(payload(i, size))}) for i in range(m))
    return "push_stream", b"\n".join(lines) + b"\n"


class Running:
    """A started server process and the HTTP session the harness drives it with."""

    def __init__(self, spec: Spec, port: int, rpc_port: int, proc: subprocess.Popen[bytes]) -> None:
        self.spec, self.port, self.rpc_port, self.proc = spec, port, rpc_port, proc
        self.base = f"http://{HOST}:{port}{spec.api}/"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        self.probe: Path | None = None
        self.probe_dir: Path | None = None
        self.scrapes = 0
        #: ``time.perf_counter()`` when the last broadcast was triggered
        self.triggered = 0.0

    def probe_reading(self) -> tuple[float, float]:
        """im's last broadcast: ms to all socket writes done, ms to fan-out (probe)."""
        assert self.probe is not None
        written, fanout, _ = self.probe.read_text().split()
        return float(written), float(fanout)

    def probe_ends(self) -> list[tuple[float, int]]:
        """Per worker (``probe_dir``): when its last large flush round was written
        (``time.perf_counter()``, comparable across processes) and its connections."""
        assert self.probe_dir is not None
        ends = []
        for path in self.probe_dir.iterdir():
            text = path.read_text().split()
            if text:
                ends.append((float(text[0]), int(text[1])))
        return ends

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid) if self.spec.pinned else tree_rss_kb(self.proc.pid)

    def cpu_seconds(self) -> float:
        """The server's CPU so far: of its process, or its whole tree (workers)."""
        return cpu_seconds(self.proc.pid) if self.spec.pinned else tree_cpu_seconds(self.proc.pid)

    def run_seconds(self) -> float:
        """As ``cpu_seconds``, to the nanosecond (``schedstat``)."""
        pids = [self.proc.pid] if self.spec.pinned else tree(self.proc.pid)
        return sum(run_seconds(p) for p in pids)

    def cpu_by_process(self) -> dict[str, float]:
        """CPU so far of each process of the server's tree (one entry if pinned)."""
        return tree_cpu_by_process(self.proc.pid)

    async def post(self, route: str, body: bytes) -> dict:
        async with self.session.post(self.base + route, data=body) as r:
            reply = await r.read()
            if r.status != 200:
                raise RuntimeError(f"{self.spec.name} {route}: {r.status} {reply[:200]!r}")
            answer = orjson.loads(reply)
            # push_stream answers 200 with an error per refused line (e.g. a burst
            # over 80 % of --broadcast-buffer): fail now, not after waiting for frames
            results = answer.get("results", ()) if isinstance(answer, dict) else ()
            errors = [x for x in results if "error" in x]
            if errors:
                raise RuntimeError(f"{self.spec.name} {route}: {len(errors)} refused: {errors[0]}")
            return answer

    async def count(self) -> int:
        async with self.session.get(self.base + "stats") as r:
            if r.status != 200:  # a cluster node answers 503 while its broker is away
                raise RuntimeError(f"{self.spec.name}: stats {r.status} {await r.text()}")
            return int((await r.json())[self.spec.count_field])

    async def wait_count(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got: int | str = await self.count()
            except RuntimeError as exc:  # retried: a broker outage of a moment
                got = str(exc)
            if got == n:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.spec.name}: {got} of {n} clients registered")
            await asyncio.sleep(0.1)


async def _scrape(server: Running, path: str) -> None:
    """GET ``path`` every ``SCRAPE_EVERY`` seconds; a failed scrape stops the run."""
    url = f"http://{HOST}:{server.port}{path}"
    while True:
        async with server.session.get(url) as r:
            body = await r.read()
            if r.status != 200 or b"im_deliveries_total" not in body:
                raise RuntimeError(f"{server.spec.name}: scrape {r.status} {body[:200]!r}")
        server.scrapes += 1
        await asyncio.sleep(SCRAPE_EVERY)


@contextlib.asynccontextmanager
async def running(
    spec: Spec, cpu: int = SERVER_CPU, extra_args: Sequence[str] = ()
) -> AsyncIterator[Running]:
    """Start ``spec`` (its command line plus ``extra_args``), yield it, stop it."""
    port, rpc_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(spec.root), **spec.env}
    probe = Path(tempfile.gettempdir()) / f"im-bench-probe-{port}"
    env["BENCH_PROBE_FILE"] = str(probe)
    probe_dir = Path(tempfile.mkdtemp(prefix="im-bench-probe-")) if spec.probe_dir else None
    if probe_dir is not None:
        env["BENCH_PROBE_DIR"] = str(probe_dir)
    # Unpinned: every core. Without a mask of its own the server would inherit the
    # harness's (the load generator's core alone), workers and nats-server with it.
    every = f"0-{(os.cpu_count() or 1) - 1}"
    pin = ["taskset", "-c", str(cpu) if spec.pinned else every]
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once per session, before timing
        [*pin, *spec.argv(port, rpc_port), *extra_args],
        cwd=spec.root,
        env=env,
    )
    spy: subprocess.Popen[bytes] | None = None
    scraper: asyncio.Task[None] | None = None
    server = Running(spec, port, rpc_port, proc)
    server.probe, server.probe_dir = probe, probe_dir
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{spec.name} exited with {proc.returncode}")
            try:
                _, w = await asyncio.open_connection(HOST, port)
                w.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{spec.name} did not start") from None
                await asyncio.sleep(0.1)
        while True:  # the HTTP side is up too, and so is the broker a cluster node needs
            async with server.session.get(server.base + "stats") as r:
                if r.status == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{spec.name}: stats {r.status} {await r.text()}")
            await asyncio.sleep(0.1)
        while spec.nodes:
            async with server.session.get(server.base + "nodes") as r:
                if r.status == 200 and len((await r.json())["nodes"]) >= spec.nodes:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{spec.name}: nodes {r.status} {await r.text()}")
            await asyncio.sleep(0.1)
        if spec.pin_workers:
            pin_workers(proc.pid)
        if spec.scrape:
            scraper = asyncio.get_running_loop().create_task(_scrape(server, spec.scrape))
        profile = os.environ.get("BENCH_PROFILE")  # collapsed stacks of the server
        if profile:
            exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen(  # noqa: ASYNC220
                [exe, "record", "-r", "1000", "-f", "raw", "-o", profile, "-p", str(proc.pid)]
                + ([] if spec.pinned else ["--subprocesses"])  # workers: the whole tree
            )
        yield server
    finally:
        if scraper is not None:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(30)
        await server.session.close()
        probe.unlink(missing_ok=True)
        if probe_dir is not None:
            shutil.rmtree(probe_dir, ignore_errors=True)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
