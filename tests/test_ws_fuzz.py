"""Property-based tests of the WebSocket reader (Hypothesis).

1. Any split of a valid client byte stream gives the same messages, in order.
2. Random bytes only ever end in a documented close code: no exception escapes
   the protocol, and no read takes the loop for long.

The reader is fed directly (a recording transport, a real ``Server`` behind it),
so thousands of splits run in seconds; one more property sends random bytes over
a real socket.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.echo.echo_plugin import RawCodec
from im_core import Identity, Server, hookimpl
from im_plugins.http.frames import WEBSOCKET
from im_plugins.http.front import Edge
from im_plugins.http.gate import UNCOUNTED
from im_plugins.http.ws_reader import WsProtocol

from .conftest import eventually
from .test_websocket_protocol import RawClient, client_frame

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: What the server may close with after hostile bytes (docs/protocol.md), besides
#: echoing a valid close code the client sent.
DOCUMENTED = {1000, 1002, 1007, 1009, 4002, 4500}
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Wire:
    """A transport that records what the server writes."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.out += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close_codes(self) -> list[int]:
        """Codes of the close frames the server wrote (server frames are unmasked)."""
        codes, out, pos = [], bytes(self.out), 0
        while pos + 2 <= len(out):
            opcode, n = out[pos] & 0x0F, out[pos + 1] & 0x7F
            pos += 2
            if n == 126:
                n = int.from_bytes(out[pos : pos + 2], "big")
                pos += 2
            elif n == 127:
                n = int.from_bytes(out[pos : pos + 8], "big")
                pos += 8
            if opcode == OP_CLOSE:
                codes.append(int.from_bytes(out[pos : pos + 2], "big") if n else 1005)
            pos += n
        return codes


class Recorder:
    def __init__(self) -> None:
        self.got: dict[str, list[tuple[bytes, bool]]] = {}

    @hookimpl
    def im_receive(self, conn: Any, data: bytes, binary: bool) -> None:
        self.got.setdefault(conn.user_id, []).append((data, binary))


@pytest.fixture
async def reader_env(make_server) -> tuple[Server, Recorder, Edge]:
    rec = Recorder()
    server = await make_server(plugins=(rec, RawCodecPlugin()), max_inbound_rate=0)
    return server, rec, Edge(server, lambda: asyncio.Protocol())


class RawCodecPlugin:
    @hookimpl
    def im_register_codecs(self, register: Any) -> None:
        register(RawCodec())


_users = iter(range(1 << 30))


async def open_reader(server: Server, edge: Edge) -> tuple[WsProtocol, Wire, str]:
    wire = Wire()
    ws = WsProtocol(edge, wire, UNCOUNTED)  # type: ignore[arg-type]
    user = f"fuzz-{next(_users)}"
    fmt = server.connections.format_for("raw", None, WEBSOCKET)
    conn = await server.connections.attach(Identity(user), fmt, wire, ws.close)
    ws.start(conn)
    return ws, wire, user


messages = st.lists(
    st.one_of(
        st.text(max_size=300).map(lambda t: (t.encode(), False)),
        st.binary(max_size=300).map(lambda b: (b, True)),
    ),
    min_size=1,
    max_size=8,
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[bytes, bool]], bytes, list[int]]:
    """Messages, their wire form (random fragmentation, pings between), and cuts."""
    sent = draw(messages)
    wire = b""
    for data, binary in sent:
        n_frags = draw(st.integers(1, 4))
        cuts = sorted(
            draw(st.lists(st.integers(0, len(data)), min_size=n_frags - 1, max_size=n_frags - 1))
        )
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        for i, part in enumerate(parts):
            opcode = (OP_BINARY if binary else OP_TEXT) if i == 0 else OP_CONT
            mask = draw(st.binary(min_size=4, max_size=4))
            wire += client_frame(opcode, part, fin=i == len(parts) - 1, mask=mask)
            if draw(st.booleans()):
                wire += client_frame(OP_PING, b"p", mask=b"abcd")  # control frames may interleave
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=20))))
    return sent, wire, cuts


@SETTINGS
@given(case=streams())
async def test_any_split_gives_the_same_messages(reader_env, case) -> None:
    server, rec, edge = reader_env
    sent, stream, cuts = case
    ws, wire, user = await open_reader(server, edge)
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        ws.data_received(stream[a:b])
    await eventually(lambda: len(rec.got.get(user, ())) == len(sent), timeout=2)
    assert rec.got[user] == sent
    assert wire.close_codes() == []


@SETTINGS
@given(
    junk=st.binary(max_size=3000),
    prefix=st.sampled_from([b"", b"\x81\x80", b"\x01\x80"]),
    chunk=st.integers(1, 512),
)
async def test_random_bytes_end_in_a_documented_close(reader_env, junk, prefix, chunk) -> None:
    server, _, edge = reader_env
    ws, wire, _ = await open_reader(server, edge)
    data = prefix + junk
    for pos in range(0, len(data), chunk):
        start = time.perf_counter()
        ws.data_received(data[pos : pos + chunk])  # never raises
        assert time.perf_counter() - start < 0.5
    codes = wire.close_codes()
    if codes:
        code = codes[0]
        assert code in DOCUMENTED or 3000 <= code < 5000 or code in range(1000, 1015), code
    await asyncio.sleep(0)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(junk=st.binary(min_size=1, max_size=2000))
async def test_random_bytes_over_a_real_socket(server: Server, junk: bytes) -> None:
    client = await RawClient.open(server, f"wire-{os.urandom(4).hex()}")
    client.send(junk)
    try:
        code = await asyncio.wait_for(client.close_code(), 0.3)
    except (TimeoutError, asyncio.IncompleteReadError):
        code = None  # still waiting for the rest of a frame, or hung up
    assert code is None or code in DOCUMENTED or 1000 <= code < 5000
    client.close()
    assert server.started
