"""The echo example sends each message back byte for byte, in the same kind of frame."""

from __future__ import annotations

import aiohttp

from im_core import Server

from .conftest import ws_url


async def test_echo_keeps_frame_kind(make_server, session: aiohttp.ClientSession) -> None:
    server: Server = await make_server(names=("examples.echo.echo_plugin",))
    async with session.ws_connect(ws_url(server) + "?codec=raw") as ws:
        await ws.send_str("héllo")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "héllo")
        await ws.send_bytes(b"\x00\xff raw")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\x00\xff raw")
        await ws.send_str("")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "")


async def test_echo_users_do_not_replace_each_other(
    make_server, session: aiohttp.ClientSession
) -> None:
    server: Server = await make_server(names=("examples.echo.echo_plugin",))
    url = ws_url(server) + "?codec=raw"
    async with session.ws_connect(url) as first, session.ws_connect(url) as second:
        await first.send_str("one")
        await second.send_str("two")
        assert (await first.receive(timeout=5)).data == "one"
        assert (await second.receive(timeout=5)).data == "two"
