"""The client transport contract: the core deals in codec bytes and close codes; a
transport's framing (WebSocket here, any other kind through the same seam) is the
plugin's."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from im_core import Identity, Server

from .conftest import eventually

ROOT = Path(__file__).resolve().parent.parent


def test_core_builds_no_websocket_frames() -> None:
    sources = {p.name: p.read_text() for p in (ROOT / "im_core").glob("*.py")}
    assert "frames.py" not in sources
    for name, text in sources.items():
        for mark in ("OP_TEXT", "OP_BINARY", "258EAFA5", "Sec-WebSocket", 'pack("!BB'):
            assert mark not in text, (name, mark)
        assert not re.search(r"^from im_plugins|^import im_plugins", text, re.M), name
        # no transport or broker library, not even for type checking
        library = r"^\s*(from|import) (aiohttp|grpc|redis|nats|multidict)\b"
        assert not re.search(library, text, re.M), name
    loaded = subprocess.run(
        [sys.executable, "-c", "import im_core, sys; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "aiohttp" not in loaded and "im_plugins" not in loaded


class Lines:
    """A toy wire: one message per line, an empty line as the liveness probe."""

    name = "lines"
    probe = b"\n"

    def message(self, data: bytes, binary: bool, sid: int) -> bytes:
        return data + b"\n"


class Wire:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed: list[tuple[int, str]] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


async def test_another_framing_behind_the_same_contract(make_server) -> None:
    server: Server = await make_server(heartbeat_interval=0.2)
    framing = Lines()
    fmt = server.connections.format_for("json", None, framing)
    wires = {}
    for user in ("a", "b"):
        wire = wires[user] = Wire()
        await server.connections.attach(Identity(user), fmt, wire, wire.close)
    server.broadcast(b"hi")
    await eventually(lambda: all(w.chunks for w in wires.values()))
    first, second = wires["a"].chunks[0], wires["b"].chunks[0]
    assert first == b'{"msg":"aGk="}\n' and first is second  # framed once, shared
    await asyncio.sleep(0.35)  # silent past half the heartbeat interval: probed
    assert framing.probe in wires["a"].chunks
    assert await server.kick("a", "bye")
    assert wires["a"].closed == [(4502, "bye")]  # im's close code, the transport's frame
