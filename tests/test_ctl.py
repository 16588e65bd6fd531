"""im-ctl: every command run as a process against a real server (started with an
API key), its human and ``--json`` output, and the exit status of each outcome."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import pathlib
import sys
import tomllib
from typing import Any

import attrs
import pytest
from aiohttp import web

from im_core import CloseCode, Server
from im_ctl.api import MAX_ANSWER

from .api_clients import http_base
from .cluster import broker_options, cleanup, free_port, new_prefix, require_broker
from .conftest import MakeServer, eventually

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEY = "s3cret"


@attrs.frozen
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def ctl(*args: str, url: str | None = None, key: str | None = KEY) -> Run:
    """``im-ctl ARGS`` against ``url``, with ``key`` in IM_API_KEY (None: no key)."""
    env = {k: v for k, v in os.environ.items() if k not in ("IM_URL", "IM_API_KEY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if key is not None:
        env["IM_API_KEY"] = key
    if url is not None:
        env["IM_URL"] = url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "im_ctl.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def one_line(run: Run) -> str:
    """The error line: exactly one, and never a traceback."""
    lines = run.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("im-ctl: "), run.err
    return lines[0]


@pytest.fixture
async def server(make_server: MakeServer) -> Server:
    return await make_server(api_key=KEY)


async def online(server: Server, n: int) -> None:
    await eventually(lambda: server.local.local_count() == n)


# --- the key --------------------------------------------------------------------------


async def test_the_key_from_the_environment_or_the_flag(server: Server) -> None:
    url = http_base(server)
    from_env = await ctl("stats", url=url)
    flag_first = await ctl("--api-key", KEY, "--url", url, "stats", key=None)
    flag_after = await ctl("stats", "--url", url, "--api-key", KEY, key=None)
    for run in (from_env, flag_first, flag_after):
        assert run.code == 0 and run.err == ""
        assert run.out.splitlines()[0].split() == ["node_id", str(server.node_id)]


async def test_no_key_or_a_wrong_key_exits_3(server: Server) -> None:
    url = http_base(server)
    for run in (await ctl("stats", url=url, key=None), await ctl("nodes", url=url, key="nope")):
        assert run.code == 3 and run.out == ""
        assert "401 unauthenticated: missing or wrong API key" in one_line(run)
    as_json = await ctl("--json", "stats", url=url, key="nope")
    assert as_json.code == 3 and as_json.json()["error"]["code"] == "unauthenticated"


async def test_an_open_server_needs_no_key(make_server: MakeServer) -> None:
    open_server = await make_server()
    run = await ctl("stats", "--json", url=http_base(open_server), key=None)
    assert run.code == 0 and run.json()["node_id"] == open_server.node_id


# --- each command ------------------------------------------------------------------


async def test_stats(server: Server, connect) -> None:
    await connect(server, "alice", tags=["v1"])
    await online(server, 1)
    url = http_base(server)
    table = await ctl("stats", url=url)
    rows = dict(line.split() for line in table.out.splitlines())
    assert rows["online"] == "1" and rows["connections"] == "1" and rows["tag_groups"] == "1"
    stats = (await ctl("stats", "--json", url=url)).json()
    assert stats["online"] == 1 and stats["queue_capacity"] == server.options.broadcast_buffer


async def test_online_and_presence(server: Server, connect) -> None:
    await connect(server, "alice", tags=["room:7", "vip"])
    await online(server, 1)
    url = http_base(server)
    on, off = await ctl("online", "alice", url=url), await ctl("online", "ghost", url=url)
    assert (on.code, on.out) == (0, f"alice is online (node {server.node_id})\n")
    assert (off.code, off.out, off.err) == (1, "ghost is not online\n", "")

    table = await ctl("presence", "alice", url=url)
    assert table.code == 0
    head, columns, row = table.out.splitlines()
    assert head == "alice is online"
    assert columns.split() == ["DEVICE", "NODE", "CONNECTION", "CONNECTED", "(UTC)", "TAGS"]
    assert row.split()[:2] == ["-", str(server.node_id)]
    assert row.split()[-1] == "room:7,vip"

    found = await ctl("presence", "alice", "--json", url=url)
    assert found.json()["online"] is True and found.json()["tags"] == ["room:7", "vip"]
    for command in ("presence", "online"):
        missing = await ctl(command, "ghost", "--json", url=url)
        assert missing.code == 1 and missing.json()["online"] is False


async def test_kick(server: Server, connect) -> None:
    alice = await connect(server, "alice")
    await online(server, 1)
    url = http_base(server)
    run = await ctl("kick", "alice", "--reason", "maintenance", url=url)
    assert (run.code, run.out) == (0, "kicked alice\n")
    assert await alice.wait_closed() == CloseCode.KICKED
    again = await ctl("kick", "alice", url=url)
    assert again.code == 1 and again.out == ""
    assert one_line(again) == "im-ctl: 404 not_found: user 'alice' is not online"


async def test_push(server: Server, connect) -> None:
    alice = await connect(server, "alice")
    await online(server, 1)
    url = http_base(server)
    run = await ctl("push", "alice", "héllo", url=url)
    assert (run.code, run.out) == (0, "pushed to alice\n")
    assert (await alice.receive()).data == "héllo".encode()
    reply = (await ctl("push", "alice", "again", "--json", url=url)).json()
    assert reply == {"sid": 0, "missing": [], "stored": []}

    offline = await ctl("push", "ghost", "hi", url=url)
    assert offline.code == 1 and "404 not_found: user 'ghost' is not online" in one_line(offline)
    as_json = await ctl("push", "ghost", "hi", "--json", url=url)
    assert as_json.code == 1 and as_json.json()["error"]["code"] == "not_found"
    kept = await ctl("push", "ghost", "hi", "--store", url=url)
    assert kept.code == 0 and kept.out.startswith("ghost is not online: kept for them (sid ")


async def test_broadcast(server: Server, connect) -> None:
    clients = [await connect(server, "alice"), await connect(server, "bob")]
    await online(server, 2)
    url = http_base(server)
    run = await ctl("broadcast", "to all", url=url)
    assert run.code == 0 and run.out.startswith("queued for everyone (queue length ")
    for client in clients:
        assert (await client.receive()).data == b"to all"
    reply = (await ctl("--json", "broadcast", "again", url=url)).json()
    assert reply["sid"] == 0 and isinstance(reply["queue_length"], int)


async def test_tags(server: Server, connect) -> None:
    url = http_base(server)
    none = await ctl("tags", url=url)
    assert (none.code, none.out) == (0, "no tag groups\n")
    await connect(server, "alice", tags=["vip", "room:7"])
    await connect(server, "bob", tags=["room:7"])
    await online(server, 2)
    run = await ctl("tags", url=url)
    header, *rows = run.out.splitlines()
    assert header.split() == ["TAG", "USERS", "CREATED", "(UTC)"]
    assert [r.split()[:2] for r in rows] == [["room:7", "2"], ["vip", "1"]]
    tags = (await ctl("tags", "--json", url=url)).json()["tags"]
    assert {t["tag"]: t["number"] for t in tags} == {"room:7": 2, "vip": 1}


async def test_nodes(server: Server, connect) -> None:
    await connect(server, "alice")
    await online(server, 1)
    url = http_base(server)
    run = await ctl("nodes", url=url)
    assert run.code == 0
    assert [line.split() for line in run.out.splitlines()] == [
        ["NODE", "USERS", "CONNECTIONS"],
        [str(server.node_id), "1", "1"],
    ]
    reply = (await ctl("nodes", "--json", url=url)).json()
    assert reply == {"nodes": [{"node_id": server.node_id, "users": 1, "connections": 1}]}


async def test_nodes_of_a_cluster(make_server: MakeServer, connect) -> None:
    require_broker("redis")
    prefix = new_prefix()
    options = broker_options("redis", prefix)
    nodes: list[Server] = []
    try:
        a = await make_server(broker="redis", plugin=options, api_key=KEY)
        b = await make_server(broker="redis", plugin=options, api_key=KEY)
        nodes += (a, b)
        await connect(b, "alice")
        want = sorted([[a.node_id, 0, 0], [b.node_id, 1, 1]])

        async def listed() -> bool:
            reply = (await ctl("nodes", "--json", url=http_base(a))).json()
            return [[n["node_id"], n["users"], n["connections"]] for n in reply["nodes"]] == want

        await eventually(listed, timeout=10)
    finally:
        for node in nodes:
            await node.stop()
        await cleanup("redis", prefix)


async def test_control_characters_are_escaped_on_the_terminal(server: Server, connect) -> None:
    await connect(server, "eve\x1b[2J", tags=["\x1b]0;x\x07"])
    await online(server, 1)
    url = http_base(server)
    for args in (("presence", "eve\x1b[2J"), ("online", "eve\x1b[2J"), ("tags",)):
        run = await ctl(*args, url=url)
        assert run.code == 0 and "\x1b" not in run.out and "\\x1b" in run.out


# --- usage, unreachable, not im --------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("nosuch",),
        ("online",),
        ("push", "alice"),
        ("--url", "localhost:8080", "stats"),
        ("--url", "ftp://host/", "stats"),
        ("--timeout", "0", "stats"),
        ("stats", "--timeout", "soon"),
        ("--api-key", "a\nb", "stats"),
    ],
)
async def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    run = await ctl(*args, url="http://127.0.0.1:9")
    assert run.code == 2 and run.out == "" and "Traceback" not in run.err
    last = run.err.splitlines()[-1]  # argparse: usage, then the error (im-ctl [COMMAND]: error:)
    assert last.startswith("im-ctl") and ": error: " in last


async def test_a_request_the_server_refuses_as_invalid_exits_2(server: Server) -> None:
    run = await ctl("online", "", url=http_base(server))
    assert run.code == 2 and "400 invalid_argument: user: required" in one_line(run)


async def test_help_lists_the_commands_and_exit_statuses() -> None:
    run = await ctl("--help")
    assert run.code == 0
    for word in ("stats", "online", "presence", "kick", "push", "broadcast", "tags", "nodes"):
        assert word in run.out
    assert "exit status:" in run.out and "IM_API_KEY" in run.out


async def test_an_unreachable_server_exits_4() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = await ctl("stats", url=url)
    assert run.code == 4 and run.out == ""
    assert one_line(run).startswith(f"im-ctl: cannot reach {url}: ")


async def test_a_server_that_does_not_answer_exits_4() -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    silent = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        run = await ctl("stats", "--timeout", "0.5", url=f"http://127.0.0.1:{port}")
    finally:
        for writer in held:
            writer.close()
        silent.close()
    assert run.code == 4
    assert one_line(run) == f"im-ctl: cannot reach http://127.0.0.1:{port}: no answer within 0.5 s"


@pytest.fixture
async def fake_server():
    """``fake_server(routes)``: serve (method, path, handler) routes on a free
    port (an HTTP server that is not im); returns its base URL."""
    runners: list[web.AppRunner] = []

    async def make(routes: list[tuple[str, str, Any]]) -> str:
        app = web.Application()
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield make
    for runner in runners:
        await runner.cleanup()


async def test_answers_that_are_not_ims(fake_server) -> None:
    redirected: list[str] = []

    async def html(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>")

    async def no_route(request: web.Request) -> web.Response:  # an im without /nodes
        return web.json_response(
            {"error": {"code": "not_found", "message": "no route"}}, status=404
        )

    async def wrong_shape(request: web.Request) -> web.Response:
        return web.json_response({"tags": "not a list of tags"})

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        redirected.append(request.headers.get("X-API-Key", ""))
        return web.json_response({})

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = MAX_ANSWER + 1
        await response.prepare(request)
        await response.write(b'{"nodes": [')
        return response

    async def forbidden(request: web.Request) -> web.Response:  # a proxy's own check
        return web.Response(status=403, text="Forbidden")

    async def busy(request: web.Request) -> web.Response:
        error = {"code": "unavailable", "message": "redis broker: connection refused"}
        return web.json_response({"error": error}, status=503)

    url = await fake_server(
        [
            ("GET", "/api/v1/stats", html),
            ("GET", "/api/v1/nodes", no_route),
            ("GET", "/api/v1/distribution", wrong_shape),
            ("GET", "/api/v1/presence", moved),
            ("GET", "/elsewhere", elsewhere),
            ("POST", "/api/v1/broadcast", busy),
            ("POST", "/api/v1/kick", huge),
            ("POST", "/api/v1/push_user", forbidden),
        ]
    )
    runs = {
        "stats": await ctl("stats", url=url),
        "nodes": await ctl("nodes", url=url),
        "tags": await ctl("tags", url=url),
        "online": await ctl("online", "alice", url=url),
        "broadcast": await ctl("broadcast", "x", url=url),
        "kick": await ctl("kick", "alice", url=url),
    }
    assert {name: run.code for name, run in runs.items()} == dict.fromkeys(runs, 4)
    refused = await ctl("push", "alice", "x", url=url)
    assert refused.code == 3 and one_line(refused).endswith(
        "403 Forbidden (not an answer of im's API)"
    )
    assert one_line(runs["stats"]).endswith("502 Bad Gateway (not an answer of im's API)")
    assert one_line(runs["nodes"]) == "im-ctl: 404 not_found: no route"
    assert one_line(runs["tags"]).endswith("the answer is not the one im gives")
    assert redirected == []  # not followed: the key goes nowhere else
    assert "503 unavailable: redis broker: connection refused" in one_line(runs["broadcast"])
    assert one_line(runs["kick"]).endswith(f"answer over {MAX_ANSWER} bytes")


# --- the console script ------------------------------------------------------------


def test_im_ctl_is_a_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["im-ctl"].partition(":")
    assert getattr(importlib.import_module(module), name).__module__ == "im_ctl.cli"
