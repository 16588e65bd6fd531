"""Where this node last found users that are on other nodes, so a push to one of
them goes straight to that node without a presence lookup (one connection per
user only: with several, a new device elsewhere would go unseen).

A route may be stale; the push still arrives: the node asked answers with the
users it did not reach, and the sender forgets their routes, looks them up and
pushes to the node presence names now (``ClusterBroker.publish``). Routes are
learned from presence lookups and from another node's ``Take`` (the user's new
login there), forgotten when the user logs in here or a node does not reach them,
and kept at most ``max_age`` seconds: that bounds a route to a node that still
holds a login replaced elsewhere which it was not told to close (a failed ``Take``).
"""

from __future__ import annotations

import time

MAX_ROUTES = 100_000  # the oldest route goes first beyond this


class Routes:
    """user -> (node id, monotonic deadline)."""

    def __init__(self, max_age: float, size: int = MAX_ROUTES) -> None:
        self.max_age = max_age
        self.size = size
        self._where: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def get(self, user: str) -> int | None:
        """The node ``user`` was last found on; None if unknown or too old."""
        route = self._where.get(user)
        if route is None:
            return None
        if route[1] < time.monotonic():
            del self._where[user]
            return None
        return route[0]

    def learn(self, user: str, node: int) -> None:
        where = self._where
        where.pop(user, None)  # re-inserted last: the oldest stay first
        where[user] = (node, time.monotonic() + self.max_age)
        if len(where) > self.size:
            del where[next(iter(where))]

    def forget(self, user: str) -> None:
        self._where.pop(user, None)
