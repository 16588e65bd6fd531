"""The plugin system: loading, blocking, entry points, hook docs."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import aiohttp
import pluggy
import pytest

from im_client import Client
from im_core import hookimpl
from im_core.plugins import PluginError, get_plugin_manager

from .conftest import eventually, ws_url
from .test_cli import start_node

ROOT = Path(__file__).resolve().parent.parent


def test_every_hook_is_documented() -> None:
    from im_core import hookspecs

    hooks = [name for name in dir(hookspecs) if name.startswith("im_")]
    doc = (ROOT / "docs" / "hooks.md").read_text()
    headings = set(re.findall(r"^##+ `?(im_\w+)", doc, re.M))
    assert hooks and set(hooks) <= headings, sorted(set(hooks) - headings)
    for name in hooks:  # each section shows the signature
        assert re.search(rf"def {name}\(", doc), name


def test_builtins_are_registered_like_external_plugins() -> None:
    pm = get_plugin_manager(autoload=False)
    names = {name for name, _ in pm.list_name_plugin()}
    assert {"memory_broker", "json_codec", "protobuf_codec", "token_auth", "http"} <= names


def test_block_and_load_by_dotted_path() -> None:
    pm = get_plugin_manager(["no:token_auth", "tests.plugins.echo"], autoload=False)
    assert pm.is_blocked("token_auth") and pm.has_plugin("tests.plugins.echo")
    with pytest.raises(PluginError, match=r"not\.a\.module"):
        get_plugin_manager(["not.a.module"], autoload=False)


def test_misspelled_hook_is_caught() -> None:
    class Typo:
        @hookimpl
        def im_recieve(self, data):
            pass

    pm = get_plugin_manager(autoload=False)
    pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


def test_autoload_can_be_disabled(monkeypatch) -> None:
    pytest.importorskip("myauth")
    assert get_plugin_manager().has_plugin("myauth")
    monkeypatch.setenv("IM_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert not get_plugin_manager().has_plugin("myauth")
    assert get_plugin_manager(["myauth"]).has_plugin("myauth")  # by entry-point name


async def test_receive_plugin_loaded_by_path(make_server, connect) -> None:
    server = await make_server(names=("tests.plugins.echo",))
    client = await connect(server, "eve")
    await eventually(lambda: server.local.local_count() == 1)
    await client.send(b"hi")
    assert (await client.receive()).data == b"echo:hi"


# --- the example plugin package (examples/myauth) ---------------------------------


async def test_myauth_validates_signed_tokens(make_server, connect, monkeypatch) -> None:
    myauth = pytest.importorskip("myauth")
    monkeypatch.setenv("MYAUTH_SECRET", "s3cret")
    server = await make_server(names=("myauth",))
    good = myauth.make_token("zoe", "s3cret", tags=("room",))
    client = await connect(server, good)
    await eventually(lambda: server.local.local_count() == 1)
    assert server.buckets.get("zoe").tags == {"room"}
    await client.close()
    async with aiohttp.ClientSession() as http:
        for token in (
            myauth.make_token("zoe", "wrong secret"),
            myauth.make_token("zoe", "s3cret", ttl=-10),
            "zoe",
            "",
        ):
            async with http.get(ws_url(server), params={"token": token}) as resp:
                assert resp.status == 401, token
                assert (await resp.json())["error"]["message"].startswith("token")


async def test_im_run_with_plugin_myauth() -> None:
    myauth = pytest.importorskip("myauth")
    env = {"MYAUTH_SECRET": "k"}
    proc, port, _ = await start_node("--plugin", "myauth", env=env)
    try:
        url = f"http://127.0.0.1:{port}/conn"
        async with Client(url, myauth.make_token("amy", "k")) as client:
            assert client.connects == 1
        async with aiohttp.ClientSession() as http:
            async with http.get(url, params={"token": "amy"}) as resp:
                assert resp.status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


def test_myauth_secret_option_is_declared(capsys) -> None:
    pytest.importorskip("myauth")
    from im_core.cli import main

    with pytest.raises(SystemExit):
        main(["--help", "--plugin", "myauth"])
    assert "--myauth-secret" in capsys.readouterr().out
