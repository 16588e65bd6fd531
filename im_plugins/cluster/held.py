"""Broadcasts and tag pushes the broker did not take, held for when it is back.

A node delivers a broadcast to its own users first, then publishes it for the other
nodes. While the broker cannot be reached that publish waits here (in order, the
oldest dropped first when full) and goes out once the node reconnects, unless it
waited longer than ``HOLD_FOR``: an old broadcast arriving late would be news of
the past. What is dropped is counted and logged, never silently lost."""

from __future__ import annotations

import collections
import logging
import time

from im_core.broker import Push

log = logging.getLogger("im.cluster")

HOLD_FOR = 30.0  # seconds a held broadcast may wait for the broker
MAX_HELD = 4096  # held broadcasts/tag pushes; the oldest is dropped beyond this

#: a push and its message id (receivers deliver an id once)
Item = tuple[Push, int]


class Held:
    def __init__(self, name: str, hold_for: float = HOLD_FOR, limit: int = MAX_HELD) -> None:
        self.name = name
        self.hold_for = hold_for
        self.limit = limit
        self._items: collections.deque[tuple[float, Item]] = collections.deque()
        self.dropped = 0  # reached only this node: too old, or the hold was full

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: list[Item], before: bool = False) -> None:
        """Hold ``items`` after those held, or ``before`` them (items older than any
        held: a batch that was in flight when the broker failed)."""
        if items and not self._items:
            log.info(
                "%s broker: holding broadcasts for the other nodes until it is back "
                "(up to %g s)", self.name, self.hold_for,
            )
        now = time.monotonic()
        if before:
            self._items.extendleft((now, item) for item in reversed(items))
        else:
            self._items.extend((now, item) for item in items)
        over = len(self._items) - self.limit
        if over > 0:
            for _ in range(over):
                self._items.popleft()
            self._lost(over, f"more than {self.limit} held")

    def take(self) -> list[Item]:
        """Everything held, in order, but what waited too long (dropped, logged)."""
        cutoff = time.monotonic() - self.hold_for
        # Not only from the front: a batch held ``before`` the others is older than
        # its time of holding says.
        items = [item for at, item in self._items if at >= cutoff]
        stale = len(self._items) - len(items)
        self._items.clear()
        if stale:
            self._lost(stale, f"held longer than {self.hold_for:g} s")
        if items:
            log.info("%s broker: sending %d held broadcasts", self.name, len(items))
        return items

    def _lost(self, n: int, why: str) -> None:
        self.dropped += n
        log.warning(
            "%s broker: %d broadcasts reached only this node (%s)", self.name, n, why
        )
