"""Kept entries as a cluster broker stores them (docs/cluster.md, "Durable acks and
the offline inbox").

One entry is a fixed header and the payload: when it was kept and when it expires
(unix milliseconds, so nodes agree), its try count, and for the NATS broker, which
stores a user's entries in one value, also its sid and length. Redis keeps the sid
as the hash field and reads the payload length off the value.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import orjson

from im_core.ack import Unacked
from im_core.broker import Kept, TagKept

HEAD = struct.Struct(">QQH")  # kept_ms, expires_ms, tries
RECORD = struct.Struct(">QQQHI")  # sid, kept_ms, expires_ms, tries, payload length


def now_ms() -> int:
    return int(time.time() * 1000)


@attrs.frozen(slots=True)
class Entry:
    sid: int
    kept_ms: int
    expires_ms: int
    tries: int
    payload: bytes

    def kept(self) -> Kept:
        return Kept(self.kept_ms / 1000, self.sid, self.payload, self.tries)

    def unacked(self, user: str) -> Unacked:
        entry = Unacked(user, self.sid, self.payload, 0.0)
        entry.tries = self.tries
        return entry


def pack_value(kept_ms: int, expires_ms: int, tries: int, payload: bytes) -> bytes:
    """One entry as a Redis hash value (the sid is the field)."""
    return HEAD.pack(kept_ms, expires_ms, tries) + payload


def unpack_value(sid: int, value: bytes) -> Entry:
    kept_ms, expires_ms, tries = HEAD.unpack_from(value)
    return Entry(sid, kept_ms, expires_ms, tries, value[HEAD.size :])


def pack_records(entries: Iterable[Entry]) -> bytes:
    """A user's entries as one NATS KV value."""
    return b"".join(
        RECORD.pack(e.sid, e.kept_ms, e.expires_ms, e.tries, len(e.payload)) + e.payload
        for e in entries
    )


def unpack_records(value: bytes) -> Iterator[Entry]:
    at = 0
    while at < len(value):
        sid, kept_ms, expires_ms, tries, size = RECORD.unpack_from(value, at)
        at += RECORD.size
        yield Entry(sid, kept_ms, expires_ms, tries, value[at : at + size])
        at += size


def pack_tag_push(kept: TagKept) -> bytes:
    """A kept tag push as JSON (rare: the payload goes as base64)."""
    return orjson.dumps(
        {
            "a": kept.at,
            "e": kept.expires,
            "s": kept.sid,
            "k": kept.kind,
            "g": kept.tags,
            "p": base64.b64encode(kept.payload).decode(),
        }
    )


def unpack_tag_push(data: bytes | dict[str, Any]) -> TagKept:
    v: dict[str, Any] = orjson.loads(data) if isinstance(data, bytes) else data
    return TagKept(
        float(v["a"]), float(v["e"]), int(v["s"]), v["k"], tuple(v["g"]), base64.b64decode(v["p"])
    )
