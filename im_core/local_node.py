"""The node as its broker sees it: local delivery, presence, counts, kicks and
retags, and the unacked messages that follow a user between nodes
(``im_core.broker.LocalNode``). ``server.local`` is the one a broker gets."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .ack import AckOutcome, Unacked
from .broker import Presence, Push
from .connection import Connection, Format
from .connections import presence_of
from .errors import InvalidArgument
from .tags import TagStat

if TYPE_CHECKING:
    from .server import Server


class Node:
    def __init__(self, server: Server) -> None:
        self._server = server

    def deliver(self, push: Push) -> list[str]:
        """Deliver ``push`` to this node's connections, encoding once per format."""
        server = self._server
        cache: dict[Format, bytes] = {}
        sid, payload = push.sid, push.payload
        track = server.acks.track if sid else None
        tracks = server.acks.tracks
        if push.kind == "users":
            missing = []
            get = server.buckets.get
            for user in push.users:
                conn = get(user)
                if conn is None:
                    missing.append(user)
                    continue
                if track is not None and tracks(user, sid):
                    continue  # read from the broker's copy on connect: sent already
                frame = cache.get(conn.fmt)
                if frame is None:
                    frame = cache[conn.fmt] = conn.fmt.build(sid, payload)
                if not conn.send(frame):
                    missing.append(user)
                elif track is not None:
                    track(user, sid, payload).queued = conn.holding
            return missing
        if push.kind == "all":
            conns: Iterable[Connection] = list(server.buckets)
        elif push.kind == "tags_any":
            conns = server.tags.any_of(push.tags)
        else:
            conns = server.tags.all_of(push.tags)
        fmt: Format | None = None
        frame = b""
        for conn in conns:
            if conn.fmt is not fmt:  # connections mostly share one format: skip the lookup
                fmt = conn.fmt
                frame = cache.get(fmt) or cache.setdefault(fmt, fmt.build(sid, payload))
            if track is not None and tracks(conn.user_id, sid):
                continue
            if conn.send(frame) and track is not None:
                track(conn.user_id, sid, payload).queued = conn.holding
        return []

    def local_presence(self, user_id: str) -> Presence | None:
        server = self._server
        conn = server.buckets.get(user_id)
        return None if conn is None else presence_of(conn, server.node_id)

    def local_count(self) -> int:
        server = self._server
        return len(server.buckets)

    def local_distribution(self) -> dict[str, TagStat]:
        server = self._server
        return server.tags.distribution()

    def kick_local(self, user_id: str, code: int, reason: str, conn_id: str | None) -> bool:
        server = self._server
        conn = server.buckets.get(user_id)
        if conn is None or (conn_id is not None and conn.conn_id != conn_id):
            return False
        conn.close(code, reason)
        return True

    def retag_local(self, user_id: str, add: tuple[str, ...], remove: tuple[str, ...]) -> bool:
        server = self._server
        conn = server.buckets.get(user_id)
        if conn is None:
            return False
        if len((conn.tags - set(remove)) | set(add)) > server.options.max_tags:
            raise InvalidArgument(
                f"retag: {user_id!r} would have more than {server.options.max_tags} tags (max_tags)"
            )
        server.tags.remove(conn, remove)
        server.tags.add(conn, add, time.time())
        return True

    def has_unacked(self, user_id: str) -> bool:
        server = self._server
        return server.acks.has(user_id)

    def take_unacked(self, user_id: str) -> list[Unacked]:
        server = self._server
        if server.buckets.get(user_id) is not None:
            return []  # the user is (again) connected here: the entries stay
        return server.acks.take(user_id)

    def adopt_unacked(self, user_id: str, entries: list[Unacked]) -> None:
        server = self._server
        conn = server.buckets.get(user_id)
        for handed in entries:
            entry = server.acks.adopt(user_id, handed.sid, handed.payload, handed.tries)
            # A connection still being set up sends every adopted entry in order
            # once it is (``Connections.attach``).
            if entry is not None and conn is not None and not conn.holding:
                server.acks.redeliver(entry, lambda e: conn.send(conn.fmt.build(e.sid, e.payload)))

    def ack_outcome(self, outcome: AckOutcome) -> None:
        server = self._server
        server.outcomes.publish(outcome)
        server.spawn(server.hooks.ack_outcome(server, outcome))

    def keep(self, user_id: str, sid: int, payload: bytes, ttl: float) -> bool:
        server = self._server
        opts = server.options
        count, size = server.acks.inbox(user_id)
        if count >= opts.inbox_max_messages or size + len(payload) > opts.inbox_max_bytes:
            return False
        conn = server.buckets.get(user_id)
        if conn is None:
            return server.acks.park(user_id, sid, payload, ttl) is not None
        # Connected since the push found them offline: send it now, as an unacked entry.
        entry = server.acks.adopt(user_id, sid, payload, 0)
        if entry is not None:
            server.acks.redeliver(entry, lambda e: conn.send(conn.fmt.build(e.sid, e.payload)))
        return True

    def expired(self, entry: Unacked, reason: str) -> None:
        self._server.ack_expired(entry, reason)
