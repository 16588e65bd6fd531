"""Whether a cluster broker reaches its backing service (Redis, NATS), and calls to it
bounded in time, so an outage answers ``Unavailable`` (HTTP 503) instead of hanging.
Every call passes here, so here it is timed and its failures counted (metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from im_core.errors import Unavailable
from im_core.metrics import RoundTrips

log = logging.getLogger("im.cluster")


class Health:
    """Up or down; each change is logged once, not once per failed call."""

    def __init__(self, name: str, timeout: float, errors: tuple[type[BaseException], ...]) -> None:
        self.name = name
        self.timeout = timeout
        #: what a bounded call fails with: a timeout, or an exception of the client
        #: library that means "the broker cannot be reached"
        self.failures: tuple[type[BaseException], ...] = (TimeoutError, *errors)
        self.up = False
        #: calls by operation, for metrics (``Broker.round_trips``)
        self.round_trips: dict[str, RoundTrips] = {}

    def set(self, up: bool, why: object = "") -> None:
        if up != self.up:
            if up:
                log.info("%s broker: connected", self.name)
            else:
                # repr: a timeout's str() is empty
                log.warning("%s broker: unavailable: %r", self.name, why)
        self.up = up

    def _trips(self, what: str, peer: bool) -> RoundTrips:
        key = ("peer_" if peer else "") + what.replace(" ", "_")
        trips = self.round_trips.get(key)
        if trips is None:  # a fixed set of operations: this dict stays small
            trips = self.round_trips[key] = RoundTrips()
        return trips

    @contextlib.asynccontextmanager
    async def guard(self, what: str, peer: bool = False) -> AsyncIterator[None]:
        """Bound a call to the broker by ``broker_timeout``; failures become
        ``Unavailable``. A ``peer`` call waits for another node: its timeout says
        nothing about the broker. Each call is timed and counted by operation
        (``round_trips``: ``presence_lookup``, ``peer_take``, ...)."""
        trips = self._trips(what, peer)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except self.failures as exc:
            trips.errors += 1
            if not (peer and isinstance(exc, TimeoutError)):
                self.set(False, exc)
            raise Unavailable(f"{self.name} broker unavailable ({what}): {exc!r}") from exc
        finally:
            trips.seconds.observe(time.perf_counter() - start)
