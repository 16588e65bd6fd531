"""A msgpack-style binary codec in a plugin: pushes are an 8-byte sid then the
payload; client frames are data (no acks). It can be the server's default codec."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from im_core import hookimpl
from im_core.codec import BadFrame, ClientFrame, Codec
from im_core.options import option, to_bool


class LenpackCodec:
    name = "lenpack"
    text_safe = False  # binary frames only

    def encode_push(self, sid: int, msg: bytes) -> bytes:
        return sid.to_bytes(8, "big") + msg

    def decode_client(self, data: bytes) -> ClientFrame:
        if not data:
            raise BadFrame("empty frame")
        return ClientFrame(data=data)

    def decode_push(self, data: bytes) -> tuple[int, bytes]:
        return int.from_bytes(data[:8], "big"), data[8:]

    def encode_client(self, *, acks: tuple[int, ...] = (), data: bytes | None = None) -> bytes:
        return data or b""


@attrs.define(kw_only=True)
class LenpackOptions:
    lenpack_strict: bool = option(False, "refuse empty client frames", converter=to_bool)


@hookimpl
def im_add_options(add: Callable[..., None]) -> None:
    add(LenpackOptions)


@hookimpl
def im_register_codecs(register: Callable[[Codec], None]) -> None:
    register(LenpackCodec())
