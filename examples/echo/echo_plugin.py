"""An echo server in one plugin: every message comes back unchanged, in the kind of
frame it came in. It is what WebSocket conformance suites (Autobahn|Testsuite) test.

Run from the project root:

    im-run --plugin examples.echo.echo_plugin
    # then connect to ws://127.0.0.1:8080/conn?codec=raw

It registers a ``raw`` codec (a push is the message's bytes, with no envelope) and
accepts every connection under a fresh user id: a suite reconnects for each case
with the same URL, and one user id would make each login replace the previous one.
That makes it a test fixture, not something to load next to real authentication.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from im_core import Identity, hookimpl
from im_core.codec import ClientFrame, Codec
from im_core.connection import Connection


class RawCodec:
    """Bytes in, the same bytes out: no sids, no acks."""

    name = "raw"
    # Text frames carry what the client sent as text, which the reader has checked
    # to be UTF-8 by the time a hook sees it.
    text_safe = True

    def encode_push(self, sid: int, msg: bytes) -> bytes:
        return msg

    def decode_client(self, data: bytes) -> ClientFrame:
        return ClientFrame(data=data)

    def decode_push(self, data: bytes) -> tuple[int, bytes]:
        return 0, data

    def encode_client(self, *, acks: tuple[int, ...] = (), data: bytes | None = None) -> bytes:
        if acks:
            raise ValueError("the raw codec carries no acks")
        return data or b""


_ids = itertools.count(1)


@hookimpl
def im_register_codecs(register: Callable[[Codec], None]) -> None:
    register(RawCodec())


@hookimpl
def im_validate() -> Identity:
    return Identity(f"echo-{next(_ids)}")


@hookimpl
def im_receive(conn: Connection, data: bytes, binary: bool) -> None:
    conn.reply(data, binary=binary)
