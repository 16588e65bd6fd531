"""A start that fails at any step undoes exactly what it started: no port stays
open, no task or timer runs, the broker is stopped."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from im_core import Options, Server, hookimpl
from im_core.errors import StartupFailed
from im_core.plugins import get_plugin_manager
from im_plugins.memory_broker import MemoryBroker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


class Broker(MemoryBroker):
    """The memory broker, remembering whether it was stopped."""

    stopped = False

    async def stop(self) -> None:
        Broker.stopped = True
        await super().stop()


class BrokerPlugin:
    @hookimpl(tryfirst=True)
    def im_broker(self, server: Server) -> Broker:
        return Broker()


class BrokerFails(BrokerPlugin):
    @hookimpl(tryfirst=True)
    def im_broker(self, server: Server) -> Any:
        class Failing(Broker):
            async def start(self, server: Server) -> None:  # type: ignore[override]
                raise RuntimeError("broker down")

        return Failing()


class StartupFails:
    @hookimpl
    def im_startup(self) -> None:
        raise RuntimeError("plugin failed to start")


async def _start(http_port: int, rpc_port: int, *plugins: Any) -> Server:
    pm = get_plugin_manager(autoload=False)
    for plugin in plugins:
        pm.register(plugin)
    options = Options.from_values(host="127.0.0.1", http_port=http_port, rpc_port=rpc_port)
    server = Server(options, pm)
    await server.start()
    return server


@pytest.mark.parametrize("step", ["broker", "grpc port taken", "startup hook"])
async def test_failed_start_is_undone(step: str) -> None:
    Broker.stopped = False
    http_port, rpc_port = _free_port(), _free_port()
    before = asyncio.all_tasks()
    taken = None
    plugins: list[Any] = [BrokerPlugin()]
    if step == "broker":
        plugins = [BrokerFails()]
    elif step == "grpc port taken":
        taken = socket.socket()
        taken.bind(("127.0.0.1", rpc_port))
        taken.listen()
    else:
        plugins.append(StartupFails())
    try:
        # A failing im_startup is named: StartupFailed, a ConfigError.
        with pytest.raises((RuntimeError, OSError, StartupFailed)):
            await _start(http_port, rpc_port, *plugins)
    finally:
        if taken is not None:
            taken.close()
    await asyncio.sleep(0.05)
    assert _refused(http_port), "the HTTP port still accepts connections"
    assert _refused(rpc_port) or step == "grpc port taken"
    assert Broker.stopped or step == "broker"
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    left.discard(asyncio.current_task())  # type: ignore[arg-type]
    assert not left, left


async def test_async_with_undoes_a_failed_start() -> None:
    http_port, rpc_port = _free_port(), _free_port()
    pm = get_plugin_manager(autoload=False)
    pm.register(StartupFails())
    options = Options.from_values(host="127.0.0.1", http_port=http_port, rpc_port=rpc_port)
    server = Server(options, pm)
    with pytest.raises(StartupFailed, match="plugin 'StartupFails' failed to start") as info:
        async with server:
            pass
    assert isinstance(info.value.__cause__, RuntimeError)
    assert _refused(http_port) and not server.started
    await server.stop()  # a no-op, not an error


async def test_unknown_default_codec_fails_start_cleanly() -> None:
    http_port = _free_port()
    pm = get_plugin_manager(["no:json_codec"], autoload=False)
    server = Server(Options.from_values(host="127.0.0.1", http_port=http_port, rpc_port=0), pm)
    with pytest.raises(Exception, match="codec"):
        await server.start()
    assert _refused(http_port)
