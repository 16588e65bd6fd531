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
            # Behind a fan-out still being written, a user's frames go out at the
            # next slice (after what was queued for them before, in one write).
            outbox = server.outbox
            urgent = outbox.expedite if outbox.backlog else None
            of = server.buckets.of
            for user in push.users:
                mine = of(user)
                if not mine:
                    missing.append(user)
                    continue
                if len(mine) == 1:  # the common case: one connection per user
                    conn = mine[0]
                    if track is not None and tracks(user, sid, conn.device):
                        continue  # read from the broker's copy on connect: sent
                    frame = cache.get(conn.fmt)
                    if frame is None:
                        frame = cache[conn.fmt] = conn.fmt.build(sid, payload)
                    if not conn.send(frame):
                        missing.append(user)
                        continue
                    if urgent is not None:
                        urgent(conn)
                    if track is not None:
                        track(user, sid, payload, conn.device).queued = conn.holding
                    continue
                reached = False
                fresh: set[str] = set()  # devices tracked by this delivery
                for conn in mine:
                    device = conn.device
                    if track is not None and device not in fresh and tracks(user, sid, device):
                        reached = True  # read from the broker's copy on connect: sent
                        continue
                    frame = cache.get(conn.fmt)
                    if frame is None:
                        frame = cache[conn.fmt] = conn.fmt.build(sid, payload)
                    if conn.send(frame):
                        reached = True
                        if urgent is not None:
                            urgent(conn)
                        if track is not None and device not in fresh:
                            track(user, sid, payload, device).queued = conn.holding
                            fresh.add(device)
                if not reached:
                    missing.append(user)
            outbox = server.outbox  # time the oldest push its next flush writes
            if outbox.scheduled and not outbox.since:
                outbox.since = push.at
            return missing
        if push.kind == "all":
            if track is None:  # queued once for everyone, not once per connection
                outbox = server.outbox
                outbox.everyone(sid, payload)
                if not outbox.since:
                    outbox.since = push.at
                return []
            conns: Iterable[Connection] = list(server.buckets)
        elif push.kind == "tags_any":
            conns = server.tags.any_of(push.tags)
        else:
            conns = server.tags.all_of(push.tags)
        fmt: Format | None = None
        frame = b""
        tracked: set[tuple[str, str]] = set()  # (user, device) tracked by this delivery
        for conn in conns:
            if conn.fmt is not fmt:  # connections mostly share one format: skip the lookup
                fmt = conn.fmt
                frame = cache.get(fmt) or cache.setdefault(fmt, fmt.build(sid, payload))
            if track is None:
                conn.send(frame)
                continue
            who = (conn.user_id, conn.device)
            if who in tracked:
                conn.send(frame)  # another connection sharing that ack state
            elif not tracks(conn.user_id, sid, conn.device) and conn.send(frame):
                track(conn.user_id, sid, payload, conn.device).queued = conn.holding
                tracked.add(who)
        outbox = server.outbox  # time the oldest push its next flush writes
        if outbox.scheduled and not outbox.since:
            outbox.since = push.at
        return []

    def local_presence(self, user_id: str) -> Presence | None:
        server = self._server
        conn = server.buckets.get(user_id)
        return None if conn is None else presence_of(conn, server.node_id)

    def local_count(self) -> int:
        server = self._server
        return len(server.buckets)

    def local_connections(self) -> int:
        return self._server.buckets.connections

    def local_devices(self, user_id: str) -> list[Presence]:
        server = self._server
        return [presence_of(c, server.node_id) for c in server.buckets.of(user_id)]

    def local_users(self) -> dict[str, list[Presence]]:
        node_id = self._server.node_id
        users: dict[str, list[Presence]] = {}
        for conn in self._server.buckets:  # in connect order: oldest first per user
            users.setdefault(conn.user_id, []).append(presence_of(conn, node_id))
        return users

    def local_distribution(self) -> dict[str, TagStat]:
        server = self._server
        return server.tags.distribution()

    def kick_local(self, user_id: str, code: int, reason: str, conn_id: str | None) -> bool:
        server = self._server
        conns = [c for c in server.buckets.of(user_id) if conn_id is None or c.conn_id == conn_id]
        for conn in conns:
            conn.close(code, reason)
        return bool(conns)

    def retag_local(self, user_id: str, add: tuple[str, ...], remove: tuple[str, ...]) -> bool:
        server = self._server
        conns = list(server.buckets.of(user_id))  # every device of the user
        for conn in conns:
            if len((conn.tags - set(remove)) | set(add)) > server.options.max_tags:
                raise InvalidArgument(
                    f"retag: {user_id!r} would have more than "
                    f"{server.options.max_tags} tags (max_tags)"
                )
        now = time.time()
        for conn in conns:
            server.tags.remove(conn, remove)
            server.tags.add(conn, add, now)
        return bool(conns)

    def has_unacked(self, user_id: str) -> bool:
        server = self._server
        return server.acks.has(user_id)

    def take_unacked(self, user_id: str, device: str) -> list[Unacked]:
        server = self._server
        if server.buckets.device(user_id, device) is not None:
            return []  # the device is (again) connected here: the entries stay
        return server.acks.take(user_id, device)

    def adopt_unacked(self, user_id: str, entries: list[Unacked]) -> None:
        server = self._server
        acks = server.acks
        for handed in entries:
            device = handed.device
            entry = acks.adopt(user_id, handed.sid, handed.payload, handed.tries, None, device)
            conn = server.buckets.device(user_id, device)
            # A connection still being set up sends every adopted entry in order
            # once it is (``Connections.attach``).
            if entry is not None and conn is not None and not conn.holding:
                acks.redeliver(entry, conn.resend)

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
        entry = server.acks.adopt(user_id, sid, payload, 0, None, conn.device)
        if entry is not None:
            server.acks.redeliver(entry, conn.resend)
        return True

    def expired(self, entry: Unacked, reason: str) -> None:
        self._server.ack_expired(entry, reason)
