"""Server-to-client WebSocket frames (RFC 6455), built once and written as bytes;
``WEBSOCKET`` is the core's ``Framing`` for WebSocket connections.

Server frames are never masked, so a frame is a 2-10 byte header plus the payload:
building it once per broadcast lets every connection share the same bytes.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame carrying ``payload``."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 1 << 16:
        return _H16.pack(first, 126, n) + payload
    return _H64.pack(first, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    # Control frames carry at most 125 bytes: 2 for the code, the rest reason, cut
    # on a character boundary (a cut character would make the reason invalid UTF-8).
    text = reason.encode()
    if len(text) > 123:
        text = text[:123].decode("utf-8", "ignore").encode()
    return frame(OP_CLOSE, struct.pack("!H", code) + text)


PING = frame(OP_PING, b"")


class WebSocketFraming:
    """How pushes travel on a WebSocket: one final text or binary frame each."""

    name = "websocket"
    probe = PING

    def message(self, data: bytes, binary: bool, sid: int) -> bytes:
        return frame(OP_BINARY if binary else OP_TEXT, data)


WEBSOCKET = WebSocketFraming()
