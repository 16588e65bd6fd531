"""Whether a cluster broker reaches its backing service (Redis, NATS), and calls to it
bounded in time, so an outage answers ``Unavailable`` (HTTP 503) instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from im_core.errors import Unavailable

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

    def set(self, up: bool, why: object = "") -> None:
        if up != self.up:
            if up:
                log.info("%s broker: connected", self.name)
            else:
                # repr: a timeout's str() is empty
                log.warning("%s broker: unavailable: %r", self.name, why)
        self.up = up

    @contextlib.asynccontextmanager
    async def guard(self, what: str, peer: bool = False) -> AsyncIterator[None]:
        """Bound a call to the broker by ``broker_timeout``; failures become
        ``Unavailable``. A ``peer`` call waits for another node: its timeout says
        nothing about the broker."""
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except self.failures as exc:
            if not (peer and isinstance(exc, TimeoutError)):
                self.set(False, exc)
            raise Unavailable(f"{self.name} broker unavailable ({what}): {exc!r}") from exc
