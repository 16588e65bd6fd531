"""Helpers for cluster tests: nodes of one cluster on a private broker prefix,
throwaway broker servers, ``im-run`` subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from im_core import Server
from im_core.broker import Push

REDIS_URL = os.environ.get("IM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("IM_TEST_NATS_URL", "nats://127.0.0.1:4222")


def require_broker(broker: str) -> None:
    """Skip, with the reason, where the broker does not answer; fail instead where
    ``IM_TEST_REQUIRE_BROKERS`` is set (CI starts both, so a skip would hide a bug)."""
    url = urlsplit(REDIS_URL if broker == "redis" else NATS_URL)
    try:
        socket.create_connection((url.hostname, url.port), timeout=1).close()
    except OSError as exc:
        reason = f"{broker} is not reachable at {url.hostname}:{url.port} ({exc})"
        if os.environ.get("IM_TEST_REQUIRE_BROKERS"):
            pytest.fail(reason)
        pytest.skip(reason)


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free right now and not handed out before in this run.

    It can still be taken before its user binds it (another process, or an
    outgoing connection's ephemeral port); ``NodeProcess`` retries for that.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def new_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def broker_options(broker: str, prefix: str, url: str | None = None, **kw: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {"broker_prefix": prefix, "presence_ttl": 1.5, "broker_timeout": 1.0}
    if broker == "redis":
        opts["redis_url"] = url or REDIS_URL
    else:
        opts["nats_url"] = url or NATS_URL
    opts.update(kw)
    return opts


def record_deliveries(server: Server) -> list[Push]:
    """Record every push the broker hands to ``server`` (to assert routing)."""
    seen: list[Push] = []
    deliver = server.local.deliver

    def spy(push: Push) -> list[str]:
        seen.append(push)
        return deliver(push)

    server.local.deliver = spy  # type: ignore[method-assign]
    return seen


async def cleanup(broker: str, prefix: str, url: str | None = None) -> None:
    """Remove whatever a test cluster left in the shared broker."""
    if broker == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url or REDIS_URL)
        try:
            keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await r.delete(*keys)
        finally:
            await r.aclose()
    else:
        import nats

        nc = await nats.connect(url or NATS_URL)
        try:
            js = nc.jetstream()
            for bucket in ("presence", "nodes", "held", "inbox", "seen", "tagbox"):
                try:
                    await js.delete_key_value(f"{prefix}_{bucket}")
                except Exception:
                    pass
        finally:
            await nc.close()


class BrokerProcess:
    """A throwaway redis-server / nats-server on a free port that a test may kill and
    restart (never the shared one)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="im-test-")
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        scheme = "redis" if self.kind == "redis" else "nats"
        return f"{scheme}://127.0.0.1:{self.port}" + ("/0" if self.kind == "redis" else "")

    def command(self) -> list[str]:
        if self.kind == "redis":
            return [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                self.dir,
            ]
        return ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.dir]

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await wait_port(self.port)

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        """The broker stopped (SIGSTOP) for the block: it keeps its connections and
        data but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await self.proc.wait()
            self.proc = None

    async def close(self) -> None:
        await self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


async def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


class NodeProcess:
    """An ``im-run`` node in its own process."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self._spawn()

    def _spawn(self) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "im_core.cli", "--host", "127.0.0.1"]
        cmd += ["--http-port", str(self.port), "--rpc-port", str(free_port()), *self.args]
        env = {**os.environ, "IM_DISABLE_PLUGIN_AUTOLOAD": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)

    @property
    def ws_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/conn"

    async def ready(self) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + 15
        respawns = 3
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode()  # type: ignore[union-attr]
                    # A port picked free was taken before the node bound it.
                    if "address already in use" in err and respawns:
                        respawns -= 1
                        self._spawn()
                        continue
                    raise RuntimeError(err)
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/ping") as resp:
                        return dict(await resp.json())
                except aiohttp.ClientError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


async def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = fn()
    if asyncio.iscoroutine(result):
        result = await result
    return result, loop.time() - start
