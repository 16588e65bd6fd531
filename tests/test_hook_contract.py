"""Every hook behaves as docs/hooks.md says, sync or async."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pluggy
import pytest

from im_client import Client
from im_core import ConnectRequest, Identity, Server, hookimpl
from im_core.plugins import get_plugin_manager

from .conftest import eventually, ws_url


async def test_async_validate_returning_none_falls_through(make_server, connect) -> None:
    asked: list[str] = []

    class NotMine:
        @hookimpl
        async def im_validate(self, request: ConnectRequest) -> None:
            await asyncio.sleep(0)
            asked.append(request.token)
            return None  # not mine: the next implementation decides

    server = await make_server(plugins=(NotMine(),))
    client = await connect(server, "alice")  # token_auth, asked next, accepts
    assert client.connects == 1 and asked == ["alice"]
    await eventually(lambda: server.buckets.get("alice"))


async def test_first_answer_wins_and_later_coroutines_are_not_run(
    make_server, connect, recwarn: pytest.WarningsRecorder
) -> None:
    ran: list[str] = []

    class Early:  # registered first: asked last
        @hookimpl
        async def im_validate(self, request: ConnectRequest) -> Identity:
            ran.append("early")
            return Identity("from-early")

    class Late:
        @hookimpl
        async def im_validate(self, request: ConnectRequest) -> Identity:
            ran.append("late")
            return Identity("from-late")

    server = await make_server(plugins=(Early(), Late()))
    await connect(server, "x")
    await eventually(lambda: server.buckets.get("from-late"))
    assert ran == ["late"]
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


async def test_wrappers_see_every_hook_call(make_server) -> None:
    """Registration hooks go through pluggy, so wrappers and tracing see them."""
    seen: list[str] = []

    class Tracer:
        @hookimpl(wrapper=True)
        def im_register_codecs(self, register: Any):  # type: ignore[no-untyped-def]
            seen.append("codecs")
            return (yield)

        @hookimpl(wrapper=True)
        def im_register_transports(self, register: Any):  # type: ignore[no-untyped-def]
            seen.append("transports")
            return (yield)

    await make_server(plugins=(Tracer(),))
    assert seen == ["codecs", "transports"]


async def test_tracing_sees_registration_hooks(monkeypatch, caplog) -> None:
    monkeypatch.setenv("IM_TRACE_HOOKS", "1")
    caplog.set_level(logging.INFO, logger="im.plugins")
    pm = get_plugin_manager(autoload=False)
    from im_core.plugins import Hooks

    Hooks(pm).codecs()
    assert any("im_register_codecs" in r.getMessage() for r in caplog.records)


async def test_plugin_registered_after_start_receives(server: Server) -> None:
    got: list[bytes] = []

    class Late:
        @hookimpl
        def im_receive(self, data: bytes) -> None:
            got.append(data)

    server.pm.register(Late())
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_url(server), params={"token": "late"})
        await ws.send_str("hello")
        await eventually(lambda: got == [b"hello"])
        await ws.close()


def test_firstresult_hooks_are_the_documented_ones() -> None:
    from im_core import hookspecs

    pm = pluggy.PluginManager("im")
    pm.add_hookspecs(hookspecs)
    first = {
        name
        for name in dir(hookspecs)
        if name.startswith("im_")
        and getattr(pm.hook, name).spec.opts.get("firstresult")  # type: ignore[union-attr]
    }
    assert first == {"im_broker"}  # may-be-async hooks are never firstresult


async def test_client_with_no_validate_plugin_gets_401(make_server) -> None:
    server = await make_server(names=("no:token_auth",))
    with pytest.raises(Exception) as info:
        await Client(ws_url(server), "anyone").connect()
    assert getattr(info.value, "status", None) == 401
