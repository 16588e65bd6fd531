"""Logs that explain what happens to users: refusals, connects, disconnects by
class, kicks, API calls (access log), the plugins at startup — as JSON lines with
stable fields or as text; a flood of one cause writes one line."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from typing import Any

import aiohttp
import grpc
import pytest

from im_client import Client, ConnectError
from im_core import CloseCode
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

from .conftest import eventually
from .test_cli import start_node

SECRET = "sekrit-token-123"


class Node:
    """An ``im-run`` process whose stderr is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, first: str) -> None:
        self.proc, self.port, self.lines = proc, port, [first]
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.proc.wait(), 20) == 0
        await self._reader


async def node(*args: str) -> Node:
    proc, port, line = await start_node(*args)
    return Node(proc, port, line)


async def scenario(n: Node) -> None:
    """A known sequence: connects, refusals (a flood of one), a push, a kick, a
    replaced login, a client close."""
    conn = f"{n.url}/conn"
    for _ in range(20):  # the same refusal, twenty times: one line
        with pytest.raises(ConnectError):
            await Client(conn, "").connect()
    with pytest.raises(ConnectError):  # refused after validation: the token stays out
        await Client(conn, SECRET, params={"codec": "xml"}).connect()
    ann = Client(conn, "ann", heartbeat=None)
    await ann.connect()
    bob = Client(conn, "bob", heartbeat=None)
    await bob.connect()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{n.url}/api/v1/push_user", json={"user": "ann", "text": "hi"}) as r:
            assert r.status == 200
        async with http.post(f"{n.url}/api/v1/kick", json={"user": "ann"}) as r:
            assert r.status == 200
    assert await ann.wait_closed() == CloseCode.KICKED
    rpc = re.search(r"grpc :(\d+)", n.lines[0])
    assert rpc is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rpc.group(1)}") as channel:
        stub = im_v1_pb2_grpc.ImStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.PushUser(pb.PushUserRequest(user="nobody", data=b"x"))
    bob2 = Client(conn, "bob", heartbeat=None)
    await bob2.connect()  # replaces bob
    assert await bob.wait_closed() == CloseCode.REPLACED
    await bob2.close()
    await ann.close()


async def test_json_lines_with_stable_fields() -> None:
    n = await node("--log-format", "json", "--log-level", "DEBUG", "--access-log", "true")
    try:
        await scenario(n)
        await eventually(lambda: _count(n, '"class":"normal"') >= 1)
    finally:
        await n.stop()
    lines = [json.loads(line) for line in n.lines]  # every line is one JSON object
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= set(line), line
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_event.setdefault(line.get("event", ""), []).append(line)

    [plugins] = by_event["plugins"]
    assert plugins["validate"] == ["token_auth"] and "http" in plugins["plugins"]
    refused, bad_codec = by_event["refused"]  # twenty attempts, one cause: one line
    assert refused["level"] == "INFO" and refused["status"] == 400
    assert bad_codec["status"] == 400 and "codec" in bad_codec["reason"]
    assert refused["remote"].startswith("127.0.0.1") and "token" in refused["reason"]
    connects = by_event["connect"]
    assert {c["user"] for c in connects} == {"ann", "bob"} and connects[0]["level"] == "DEBUG"
    classes = {(d["user"], d["class"], d["code"]) for d in by_event["disconnect"]}
    assert ("ann", "kicked", 4502) in classes and ("bob", "replaced", 4501) in classes
    assert ("bob", "normal", 1000) in classes
    [kick] = by_event["kick"]
    assert (kick["user"], kick["found"], kick["level"]) == ("ann", True, "INFO")
    calls = {(c["api"], c["method"], c["status"]) for c in by_event["api_call"]}
    assert {("http", "PushUser", 200), ("http", "Kick", 200)} <= calls
    assert ("grpc", "PushUser", "NOT_FOUND") in calls
    assert all(c["logger"] == "im.access" for c in by_event["api_call"])
    assert not any(SECRET in json.dumps(line) for line in lines)  # a token is never logged


async def test_text_lines_and_info_level() -> None:
    n = await node()  # text, INFO, no access log
    try:
        await scenario(n)
        await eventually(lambda: _count(n, "class=normal") >= 1)
    finally:
        await n.stop()
    text = "".join(n.lines)
    assert re.search(r"INFO im: plugins: .*im_validate asked in this order: token_auth", text)
    refusals = re.findall(r"INFO im.events: refused a connection from 127\.0\.0\.1.*", text)
    assert len(refusals) == 2 and SECRET not in text  # 20 + 1 attempts, two causes
    assert "event=refused status=400" in text
    assert re.search(r"INFO im.events: disconnected ann: 4502 kicked .* class=kicked", text)
    assert re.search(r"INFO im.events: kicked ann \(kicked\): closed", text)
    assert "event=connect" not in text  # DEBUG only
    assert "im.access" not in text  # --access-log is off


def _count(n: Node, needle: str) -> int:
    return sum(needle in line for line in n.lines)
