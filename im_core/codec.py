"""The codec contract: how pushes and client frames look on the wire.

A codec is contributed by a plugin through ``im_register_codecs``. The server side
uses ``encode_push`` (once per broadcast) and ``decode_client``; the client side
(``im_client``, tests, load generators) uses the other two.
"""

from __future__ import annotations

from typing import Protocol

import attrs


class BadFrame(ValueError):
    """A client frame the codec cannot read; the connection closes with 4500."""


@attrs.frozen
class ClientFrame:
    """What a client sent: acks for sids, business data, or both (or neither: a heartbeat)."""

    acks: tuple[int, ...] = ()
    data: bytes | None = None


class Codec(Protocol):
    name: str
    #: Whether the payload is valid UTF-8 and may travel in text frames.
    text_safe: bool

    def encode_push(self, sid: int, msg: bytes) -> bytes:
        """Server -> client ``PushToClient{sid, msg}``; sid 0 means "no ack wanted"."""
        ...

    def decode_client(self, data: bytes) -> ClientFrame:
        """Client -> server frame; raise BadFrame when it cannot be read."""
        ...

    def decode_push(self, data: bytes) -> tuple[int, bytes]:
        """Client side: the (sid, msg) of a pushed frame."""
        ...

    def encode_client(self, *, acks: tuple[int, ...] = (), data: bytes | None = None) -> bytes:
        """Client side: an ack and/or data frame."""
        ...
