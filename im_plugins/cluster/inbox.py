"""Kept entries as a cluster broker stores them (docs/cluster.md, "Durable acks and
the offline inbox").

One entry is a fixed header and the payload: when it was kept and when it expires
(unix milliseconds, so nodes agree), its try count, and for the NATS broker, which
stores a user's entries in one value, also its sid and length. Redis keeps the sid
as the hash field and reads the payload length off the value.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator

import attrs

from im_core.ack import Unacked

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


def in_order(entries: Iterable[Entry]) -> list[Entry]:
    """Oldest first: the order the pushes were kept in."""
    return sorted(entries, key=lambda e: (e.kept_ms, e.sid))
