"""The node's own counters: kept where things happen, read when a metrics plugin
is scraped (``server.metrics``; docs/hooks.md, "Counters").

A hot path pays a plain integer increment, never a hook call, a lock or a label
lookup: the outbox counts the frames and bytes it writes once per socket write,
and times one push per flush (push -> socket write); delivery fan-out counts
nothing per connection. Push calls are counted once per call by API, method,
kind and outcome: the push APIs count theirs (``push_call``), the core counts
the calls made without an API (``api="embedded"``). Everything here is
library-neutral; a plugin turns it into its own format at scrape time
(``im_plugins.prometheus``).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import ImError

if TYPE_CHECKING:
    from .connection import Format, Outbox

#: Upper bounds (seconds) of latency buckets: push -> socket write, broker calls.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

#: Set while a push call is being counted, so the core does not count again the
#: calls an API makes into it.
_counting: ContextVar[bool] = ContextVar("im_push_counting", default=False)

PushKey = tuple[str, str, str, str]  # api, method, kind, outcome
#: Kinds of push: one user, a list of users, everyone, tag groups; none: no target.
KINDS = ("user", "users", "broadcast", "tags", "none")


def counted() -> bool:
    """Whether the push call running now is counted already (by an API)."""
    return _counting.get()


_NOT_COUNTED = nullcontext()


class Histogram:
    """Observations counted in fixed buckets (``bounds``, upper, inclusive) plus
    their sum: one bisect and two additions per observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class RoundTrips:
    """Calls of one kind to a broker's backing service: how long they took (all of
    them, failed ones included) and how many failed."""

    __slots__ = ("errors", "seconds")

    def __init__(self) -> None:
        self.seconds = Histogram()
        self.errors = 0


def outcome_of(exc: BaseException | None) -> str:
    """A push call's outcome label: ``ok``, or the error code its caller was told
    (``invalid_argument``, ``not_found``, ``resource_exhausted``, ...)."""
    if exc is None:
        return "ok"
    if isinstance(exc, ImError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"  # the caller went away
    return "internal"


class PushCall:
    """Counts one push call when its ``with`` block ends, by the exception that
    left it (none: ``ok``). Calls into the core inside the block are not counted
    again."""

    __slots__ = ("_counts", "_key", "_token")

    def __init__(self, counts: dict[PushKey, int], api: str, method: str, kind: str) -> None:
        self._counts = counts
        self._key = (api, method, kind)

    def __enter__(self) -> None:
        self._token = _counting.set(True)

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _counting.reset(self._token)
        key = (*self._key, outcome_of(exc))
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1


class StreamCalls:
    """Counts the pushes of one push stream (``with metrics.stream("grpc") as
    count: ... count(kind, outcome)``): the stream is marked as counted once, so
    each push costs a dict increment."""

    __slots__ = ("_api", "_pushes", "_token")

    def __init__(self, pushes: dict[PushKey, int], api: str) -> None:
        self._pushes = pushes
        self._api = api

    def __enter__(self) -> Callable[[str, str], None]:
        self._token = _counting.set(True)
        pushes, api = self._pushes, self._api
        ok = {kind: (api, "PushStream", kind, "ok") for kind in KINDS}

        def count(kind: str, outcome: str) -> None:
            key = ok[kind] if outcome == "ok" else (api, "PushStream", kind, outcome)
            pushes[key] = pushes.get(key, 0) + 1

        return count

    def __exit__(self, *exc: object) -> None:
        try:
            _counting.reset(self._token)
        except ValueError:  # an abandoned stream generator finalized in another task
            pass


class Metrics:
    """What the node counted since it started (``server.metrics``): read it, do not
    write it. Monotonic counts unless said otherwise."""

    def __init__(self) -> None:
        #: push calls by (api, method, kind, outcome)
        self.pushes: dict[PushKey, int] = {}
        #: data messages received from clients (business data and acks)
        self.inbound_frames = 0
        self._opened: dict[Format, int] = {}
        self._closed: dict[Format, int] = {}
        self._outbox: Outbox | None = None
        #: push -> socket write, one observation per outbox flush (its oldest push)
        self.push_to_write = Histogram()

    # --- what the node records ------------------------------------------------------

    def embedded(self, method: str, kind: str) -> AbstractContextManager[None]:
        """Count a call of the ``Server`` push method ``method`` unless an API
        counts it already (``api="embedded"``: a plugin or program called it)."""
        if _counting.get():
            return _NOT_COUNTED
        return PushCall(self.pushes, "embedded", method, kind)

    def push_call(self, api: str, method: str, kind: str) -> PushCall:
        """Count one push call of an API: ``with server.metrics.push_call("http",
        "PushUser", "user"): ...``. ``kind`` is ``user``, ``users``, ``broadcast``
        or ``tags``; the outcome is read from the exception leaving the block."""
        return PushCall(self.pushes, api, method, kind)

    def stream(self, api: str) -> StreamCalls:
        """Count the pushes of a push stream (method ``PushStream``) one by one,
        with the kind and outcome of each: see ``StreamCalls``."""
        return StreamCalls(self.pushes, api)

    def opened(self, fmt: Format) -> None:
        self._opened[fmt] = self._opened.get(fmt, 0) + 1

    def closed(self, fmt: Format) -> None:
        self._closed[fmt] = self._closed.get(fmt, 0) + 1

    def attach(self, outbox: Outbox) -> None:
        """The outbox whose writes are counted (it is made when the node starts)."""
        self._outbox = outbox
        outbox.latency = self.push_to_write

    # --- what a metrics plugin reads --------------------------------------------------

    @property
    def frames_written(self) -> int:
        """Messages written to client connections: pushes, re-sends, replies."""
        return self._outbox.frames if self._outbox is not None else 0

    @property
    def bytes_written(self) -> int:
        """Bytes of those messages, framing included."""
        return self._outbox.bytes if self._outbox is not None else 0

    def connects(self) -> dict[tuple[str, str], int]:
        """Connections registered since the start, by (transport, codec)."""
        return _by_wire(self._opened)

    def connections(self) -> dict[tuple[str, str], int]:
        """Connections open now, by (transport, codec) (a gauge)."""
        opened, closed = _by_wire(self._opened), _by_wire(self._closed)
        return {key: n - closed.get(key, 0) for key, n in opened.items()}


def _by_wire(counts: Mapping[Format, int]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for fmt, n in list(counts.items()):
        key = (fmt.framing.name, fmt.codec.name)
        out[key] = out.get(key, 0) + n
    return out
