"""The Python client: decoded pushes, acks, reconnect with backoff, close codes."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from im_client import Client, ConnectError
from im_client.wire import WIRES
from im_core import CloseCode, ConnectRequest, Reject, Server, hookimpl
from im_plugins.json_codec import JsonCodec
from im_plugins.protobuf_codec import ProtobufCodec

from .conftest import eventually, ws_url


async def test_reconnects_after_a_reconnectable_close(server: Server) -> None:
    async with Client(ws_url(server), "rita", reconnect=True, backoff=(0.01, 0.1)) as client:
        await eventually(lambda: server.local.local_count() == 1)
        first = server.buckets.get("rita")
        first.close(CloseCode.HEARTBEAT_TIMEOUT, "test")  # 4000: the client should come back
        await eventually(
            lambda: client.connects == 2 and server.buckets.get("rita") not in (None, first)
        )
        await server.push("rita", b"after reconnect")
        assert (await client.receive()).data == b"after reconnect"


async def test_does_not_reconnect_after_kick(server: Server) -> None:
    async with Client(ws_url(server), "sam", reconnect=True, backoff=(0.01, 0.1)) as client:
        await eventually(lambda: server.local.local_count() == 1)
        await server.kick("sam")
        assert await client.wait_closed() == CloseCode.KICKED
        assert client.connects == 1


@pytest.mark.parametrize("codec", ["json", "protobuf"])
async def test_auto_ack_and_send(make_server, codec: str) -> None:
    acked = []

    from im_core import hookimpl

    class Log:
        @hookimpl
        def im_acked(self, sid: int) -> None:
            acked.append(sid)

    server = await make_server(plugins=(Log(),))
    async with Client(ws_url(server), "tom", codec=codec, auto_ack=True) as client:
        await eventually(lambda: server.local.local_count() == 1)
        result = await server.push("tom", b"\x00ack me", ack=True)
        msg = await client.receive()
        assert (msg.sid, msg.data) == (result.sid, b"\x00ack me")
        await eventually(lambda: acked == [result.sid])


def test_client_imports_no_server_plugin() -> None:
    # A fresh interpreter: this process has the plugins loaded already.
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    code = "import im_client, json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    modules = json.loads(out)
    assert "im_client.wire" in modules
    # Only the package itself and its generated protobuf messages (im_plugins.pb).
    allowed = ("im_plugins", "im_plugins.pb")
    plugins = [m for m in modules if m.split(".")[0] == "im_plugins"]
    assert [m for m in plugins if ".".join(m.split(".")[:2]) not in allowed] == []


@pytest.mark.parametrize("codec", [JsonCodec(), ProtobufCodec()], ids=lambda c: c.name)
def test_client_wire_and_server_codec_agree(codec: JsonCodec | ProtobufCodec) -> None:
    wire = WIRES[codec.name]
    assert wire.text_safe == codec.text_safe
    for sid, msg in [(0, b""), (0, b"hi"), (7, b""), (2**40, b"\x00\xffbytes")]:
        assert wire.decode_push(codec.encode_push(sid, msg)) == (sid, msg)
    assert codec.decode_client(wire.encode_client(acks=(3,))).acks == (3,)
    assert codec.decode_client(wire.encode_client(acks=(3, 4))).acks == (3, 4)
    assert codec.decode_client(wire.encode_client(data=b"up")).data == b"up"


async def test_a_refusal_carries_the_servers_status_and_reason(make_server) -> None:
    class Auth:
        @hookimpl
        def im_validate(self, request: ConnectRequest) -> Reject:
            return Reject("token expired", 401)

    server = await make_server(plugins=(Auth(),))
    with pytest.raises(ConnectError) as info:
        await Client(ws_url(server), "old-token").connect()
    assert (info.value.status, info.value.reason) == (401, "token expired")
    assert info.value.code == "unauthenticated"
    assert str(info.value) == "401: token expired"


async def test_a_refused_client_leaves_nothing_open(server: Server) -> None:
    client = Client(ws_url(server), "")  # an empty token: 400
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(ConnectError):
            await client.connect()
        del client
        gc.collect()
    assert not [w for w in caught if "Unclosed" in str(w.message)]
