"""The ack outcomes of one node as a feed: the push APIs stream it to backends
(gRPC ``AckEvents``, HTTP ``GET /api/v1/ack_events``).

The server owns one (``Server.outcomes``), publishes every outcome it reports
(``Server.ack_outcome``, on the node that allocated the sid, so a backend
subscribed on the node it pushes through sees each of its pushes once, wherever
the user was connected) and closes it on ``stop`` so open streams end at once.
Each subscriber has a bounded queue: one that falls behind is ended with
``FellBehind`` rather than silently losing outcomes, so a backend always knows
whether it saw everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .ack import AckOutcome
from .errors import ImError

#: Outcomes a subscriber may have queued before it counts as fallen behind.
QUEUE_LIMIT = 10_000


class FellBehind(ImError):
    """A subscriber did not read its outcomes fast enough; the feed ended it."""

    status = 429
    code = "resource_exhausted"


_END = object()


class Subscription:
    """One subscriber's queue; iterate it, or ``get()`` with a timeout."""

    def __init__(self, feed: OutcomeFeed, limit: int) -> None:
        self._feed = feed
        # Room for the limit plus the end marker, so put_nowait never raises.
        self._queue: asyncio.Queue[AckOutcome | object] = asyncio.Queue(limit + 2)
        self._limit = limit
        self.overflowed = False

    def put(self, item: AckOutcome | object) -> None:
        if self.overflowed:
            return
        if item is not _END and self._queue.qsize() >= self._limit:
            self.overflowed = True
            item = _END
        self._queue.put_nowait(item)

    async def get(self) -> AckOutcome | None:
        """The next outcome; ``None`` once the feed closed. Safe to cancel (timeouts)."""
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # every later get() ends too
            if self.overflowed:
                raise FellBehind(
                    f"ack events: more than {self._limit} events unread; "
                    "subscribe again (events in between are lost)"
                )
            return None
        assert isinstance(item, AckOutcome)
        return item

    async def __aiter__(self) -> AsyncIterator[AckOutcome]:
        try:
            while (item := await self.get()) is not None:
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._feed.subscribers.discard(self)


class OutcomeFeed:
    """Fan-out of one node's ack outcomes to its subscribers."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.subscribers: set[Subscription] = set()
        self.closed = False
        self.limit = limit

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self.limit)
        if self.closed:
            sub.put(_END)
        else:
            self.subscribers.add(sub)
        return sub

    def publish(self, outcome: AckOutcome) -> None:
        for sub in self.subscribers:
            sub.put(outcome)

    def close(self) -> None:
        """Shutdown: end every subscription so streaming calls can finish."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.put(_END)
