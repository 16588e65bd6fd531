"""Protobuf codec: ``PushToClient`` down, ``ClientFrame`` up (see proto/).

The client side (``decode_push``, ``encode_client``) is ``im_client.wire.ProtobufWire``.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError

from im_client.wire import ProtobufWire
from im_core import hookimpl
from im_core.codec import BadFrame, ClientFrame, Codec
from im_plugins.pb.basic_pb2 import PushToClient
from im_plugins.pb.client_pb2 import ClientFrame as PbClientFrame


class ProtobufCodec(ProtobufWire):
    def encode_push(self, sid: int, msg: bytes) -> bytes:
        return PushToClient(sid=sid, msg=msg).SerializeToString()

    def decode_client(self, data: bytes) -> ClientFrame:
        frame = PbClientFrame()
        try:
            frame.ParseFromString(data)
        except DecodeError as exc:
            raise BadFrame(f"not a ClientFrame: {exc}") from None
        if any(s <= 0 for s in frame.ack):
            raise BadFrame("ack sids must be positive")
        return ClientFrame(
            acks=tuple(frame.ack), data=frame.data if frame.HasField("data") else None
        )


@hookimpl
def im_register_codecs(register: Callable[[Codec], None]) -> None:
    register(ProtobufCodec())
