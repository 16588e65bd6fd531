"""The servers under test: how to start each, reach its clients, and trigger it.

Every server runs in its own process pinned to ``SERVER_CPU``. ``Control`` is the
one way the harness drives a server; ``trigger_burst`` is the one function to swap
when im's HTTP/gRPC push API replaces the bench trigger plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .loadgen import client_frame

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
LOADGEN_CPU = 1
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Spec:
    name: str
    argv: Callable[[int], list[str]]
    client_path: Callable[[int], str]
    control_path: str
    hello: bytes = b""
    #: connections the server counts besides the N clients (im counts its control client)
    extra: int = 0
    env: dict[str, str] = field(default_factory=dict)


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


IM = Spec(
    name="im",
    argv=lambda port: _py(
        *("-m", "im_core.cli", "--host", HOST, "--http-port", str(port), "--rpc-port", "0"),
        *("--heartbeat-interval", "3600", "--plugin", "bench.trigger_plugin"),
        *("--log-level", "WARNING"),
    ),
    client_path=lambda i: f"/conn?token=u{i}",
    control_path="/conn?token=bench-control",
    extra=1,
)
AIOHTTP = Spec(
    name="aiohttp",
    argv=lambda port: _py("-m", "bench.peers.aiohttp_peer", str(port)),
    client_path=lambda i: "/ws",
    control_path="/control",
)
SOCKETIO = Spec(
    name="socketio",
    argv=lambda port: _py("-m", "bench.peers.socketio_peer", str(port)),
    client_path=lambda i: "/socket.io/?EIO=4&transport=websocket",
    control_path="/control",
    hello=client_frame(0x1, b"40"),
)
SPECS = {s.name: s for s in (IM, AIOHTTP, SOCKETIO)}


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


class Running:
    """A started server process and its control channel."""

    def __init__(self, spec: Spec, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.spec, self.port, self.proc = spec, port, proc
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    async def connect_control(self) -> None:
        self.session = aiohttp.ClientSession()
        url = f"http://{HOST}:{self.port}{self.spec.control_path}"
        self.ws = await self.session.ws_connect(url, autoping=True, max_msg_size=0)

    async def command(self, text: str, reply: str, timeout: float = 60.0) -> str:
        """Send a control command; return the first reply starting with ``#reply``
        (pushes and replies to earlier commands are skipped)."""
        assert self.ws is not None
        await self.ws.send_str(text)
        async with asyncio.timeout(timeout):
            async for msg in self.ws:
                data = msg.data if isinstance(msg.data, str) else msg.data.decode()
                if data.startswith(("#" + reply, "#error")):
                    return data
        raise RuntimeError(f"{self.spec.name}: control closed")

    async def count(self) -> int:
        return int((await self.command("count", "count")).split()[1]) - self.spec.extra

    async def wait_count(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while (got := await self.count()) != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.spec.name}: {got} of {n} clients registered")
            await asyncio.sleep(0.1)


async def trigger_burst(server: Running, m: int, size: int) -> None:
    """Make ``server`` broadcast ``m`` messages of ``size`` bytes to every client.

    im: through ``bench.trigger_plugin`` (the HTTP/gRPC broadcast API is pending).
    """
    assert server.ws is not None
    await server.ws.send_str(f"burst {m} {size}")


@contextlib.asynccontextmanager
async def running(spec: Spec, cpu: int = SERVER_CPU) -> AsyncIterator[Running]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **spec.env}
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once per session, before timing
        ["taskset", "-c", str(cpu), *spec.argv(port)], cwd=ROOT, env=env
    )
    spy: subprocess.Popen[bytes] | None = None
    server = Running(spec, port, proc)
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
        await server.connect_control()
        profile = os.environ.get("BENCH_PROFILE")  # collapsed stacks of the server
        if profile:
            exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen(  # noqa: ASYNC220
                [exe, "record", "-r", "1000", "-f", "raw", "-o", profile, "-p", str(proc.pid)]
            )
        yield server
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(30)
        if server.session is not None:
            await server.session.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
