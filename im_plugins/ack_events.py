"""Ack outcomes as a feed the push APIs stream to backends (gRPC ``AckEvents``,
HTTP ``GET /api/v1/ack_events``).

This plugin turns the ``im_ack_outcome`` hook into events and fans them out to
subscribers of the same node. That hook fires on the node that allocated the sid,
so a backend subscribed on the node it pushes through sees the outcome of each of
its pushes once, whichever node the user was connected to (docs/api.md). Each
subscriber has a bounded queue: one that falls behind is ended with ``FellBehind``
rather than silently losing events, so a backend always knows whether it saw
everything.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from im_core import hookimpl
from im_core.ack import AckOutcome
from im_core.errors import ImError

if TYPE_CHECKING:
    from im_core.server import Server

#: Events a subscriber may have queued before it counts as fallen behind.
QUEUE_LIMIT = 10_000


#: One event of the feed: an ack outcome (outcome, user_id, sid, tries, reason, payload).
AckEvent = AckOutcome


class FellBehind(ImError):
    """A subscriber did not read its events fast enough; the feed ended it."""

    status = 429
    code = "resource_exhausted"


_END = object()


class Subscription:
    def __init__(self, feed: AckFeed, limit: int) -> None:
        self._feed = feed
        self._queue: asyncio.Queue[AckEvent | object] = asyncio.Queue(limit + 2)
        self._limit = limit
        self.overflowed = False

    def put(self, event: AckEvent | object) -> None:
        if self.overflowed:
            return
        if event is not _END and self._queue.qsize() >= self._limit:
            self.overflowed = True
            event = _END
        self._queue.put_nowait(event)

    async def get(self) -> AckEvent | None:
        """The next event; ``None`` once the feed closed. Safe to cancel (timeouts)."""
        event = await self._queue.get()
        if event is _END:
            self._queue.put_nowait(_END)  # every later get() ends too
            if self.overflowed:
                raise FellBehind(
                    f"ack events: more than {self._limit} events unread; "
                    "subscribe again (events in between are lost)"
                )
            return None
        return event  # type: ignore[return-value]

    async def __aiter__(self) -> AsyncIterator[AckEvent]:
        try:
            while (event := await self.get()) is not None:
                yield event
        finally:
            self.close()

    def close(self) -> None:
        self._feed.subscribers.discard(self)


class AckFeed:
    """The ack outcomes of one node."""

    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        self.closed = False

    def subscribe(self, limit: int | None = None) -> Subscription:
        sub = Subscription(self, limit or QUEUE_LIMIT)
        if self.closed:
            sub.put(_END)
        else:
            self.subscribers.add(sub)
        return sub

    def publish(self, event: AckEvent) -> None:
        for sub in self.subscribers:
            sub.put(event)

    def close(self) -> None:
        """Shutdown: end every subscription so streaming calls can finish."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.put(_END)


_feeds: weakref.WeakKeyDictionary[Server, AckFeed] = weakref.WeakKeyDictionary()


def feed_for(server: Server) -> AckFeed:
    feed = _feeds.get(server)
    if feed is None:
        feed = _feeds[server] = AckFeed()
    return feed


@hookimpl
def im_ack_outcome(server: Server, outcome: AckOutcome) -> None:
    feed = _feeds.get(server)
    if feed is not None and feed.subscribers:
        feed.publish(outcome)


@hookimpl
def im_shutdown(server: Server) -> None:
    feed = _feeds.get(server)
    if feed is not None:
        feed.close()
