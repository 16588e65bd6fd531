"""The client side of im's two wire formats (docs/protocol.md): reading pushes and
writing acks and data.

- **json**: ``{"sid": N, "msg": "<base64>"}`` down (either key omitted when empty);
  ``{"ack": sid}`` or ``{"ack": [sid, ...]}`` up, any other frame being data as is.
- **protobuf**: ``PushToClient`` down, ``ClientFrame`` up (``proto/``).

Each format is written once, here: the server's codecs (``im_plugins.json_codec``,
``im_plugins.protobuf_codec``) subclass these classes and add the server side
(``encode_push``, ``decode_client``). The dependency points from the server to the
client, so ``im_client`` needs no server plugin; it only shares the generated protobuf
messages (``im_plugins.pb``).
"""

from __future__ import annotations

import base64
from typing import Protocol

import orjson

from im_plugins.pb.basic_pb2 import PushToClient
from im_plugins.pb.client_pb2 import ClientFrame

__all__ = ["WIRES", "JsonWire", "ProtobufWire", "Wire"]


class Wire(Protocol):
    """What a client needs of a format (the client half of ``im_core.codec.Codec``)."""

    name: str
    #: Whether frames are valid UTF-8 and may travel as text frames.
    text_safe: bool

    def decode_push(self, data: bytes) -> tuple[int, bytes]:
        """The (sid, msg) of a pushed frame; sid 0 means no ack is wanted."""
        ...

    def encode_client(self, *, acks: tuple[int, ...] = (), data: bytes | None = None) -> bytes:
        """A frame carrying acks and/or business data."""
        ...


class JsonWire:
    name = "json"
    text_safe = True

    def decode_push(self, data: bytes) -> tuple[int, bytes]:
        obj = orjson.loads(data)
        return int(obj.get("sid", 0)), base64.b64decode(obj.get("msg", ""))

    def encode_client(self, *, acks: tuple[int, ...] = (), data: bytes | None = None) -> bytes:
        if acks and data is not None:
            raise ValueError("the json codec sends acks and data in separate frames")
        if acks:
            return orjson.dumps({"ack": acks[0] if len(acks) == 1 else list(acks)})
        return data or b""


class ProtobufWire:
    name = "protobuf"
    text_safe = False

    def decode_push(self, data: bytes) -> tuple[int, bytes]:
        push = PushToClient()
        push.ParseFromString(data)
        return push.sid, push.msg

    def encode_client(self, *, acks: tuple[int, ...] = (), data: bytes | None = None) -> bytes:
        frame = ClientFrame(ack=acks)
        if data is not None:
            frame.data = data
        return frame.SerializeToString()


#: The formats by the name a client asks for (``?codec=``).
WIRES: dict[str, Wire] = {"json": JsonWire(), "protobuf": ProtobufWire()}
