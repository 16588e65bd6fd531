"""Protobuf codec: ``PushToClient`` down, ``ClientFrame`` up (see proto/)."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError

from im_core import hookimpl
from im_core.codec import BadFrame, ClientFrame, Codec
from im_plugins.pb.basic_pb2 import PushToClient
from im_plugins.pb.client_pb2 import ClientFrame as PbClientFrame


class ProtobufCodec:
    name = "protobuf"
    text_safe = False

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

    def decode_push(self, data: bytes) -> tuple[int, bytes]:
        push = PushToClient()
        push.ParseFromString(data)
        return push.sid, push.msg

    def encode_client(self, *, acks: tuple[int, ...] = (), data: bytes | None = None) -> bytes:
        frame = PbClientFrame(ack=acks)
        if data is not None:
            frame.data = data
        return frame.SerializeToString()


@hookimpl
def im_register_codecs(register: Callable[[Codec], None]) -> None:
    register(ProtobufCodec())
