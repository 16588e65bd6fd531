"""JSON codec: ``{"sid": 123, "msg": "<base64>"}`` down, ``{"ack": sid}`` / data up.

Server -> client matches the original's Go encoding of ``PushToClient`` (fields
omitted when empty). Client -> server: a frame that is exactly a JSON object with
the single key ``"ack"`` (an integer or a list of integers) is an ack; every other
frame is business data handed to the receive hook byte for byte.

The client side (``decode_push``, ``encode_client``) is ``im_client.wire.JsonWire``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import orjson

from im_client.wire import JsonWire
from im_core import hookimpl
from im_core.codec import BadFrame, ClientFrame, Codec

_b64 = base64.b64encode


class JsonCodec(JsonWire):
    def encode_push(self, sid: int, msg: bytes) -> bytes:
        body = b'"msg":"' + _b64(msg) + b'"}' if msg else b"}"
        if sid:
            return b'{"sid":' + str(sid).encode() + (b"," + body if msg else body)
        return b"{" + body

    def decode_client(self, data: bytes) -> ClientFrame:
        head = data.lstrip()[:1]
        if head != b"{" or b'"ack"' not in data:
            return ClientFrame(data=data)
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return ClientFrame(data=data)
        if not isinstance(obj, dict) or obj.keys() != {"ack"}:
            return ClientFrame(data=data)
        value = obj["ack"]
        sids = value if isinstance(value, list) else [value]
        if not sids or not all(type(s) is int and s > 0 for s in sids):
            raise BadFrame('"ack" must be a positive integer sid or a list of them')
        return ClientFrame(acks=tuple(sids))


@hookimpl
def im_register_codecs(register: Callable[[Codec], None]) -> None:
    register(JsonCodec())
