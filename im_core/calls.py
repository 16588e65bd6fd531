"""Push API calls as the node sees them: how many are in flight (the graceful drain
waits for them) and one access-log line per call (``--access-log``).

API plugins wrap each unary call in ``server.calls.track(api, method, peer)`` and
set the returned record's ``status`` (an HTTP status or a gRPC code name).
Streaming calls (``PushStream``, ``AckEvents``) are not tracked: they last as long
as their caller wants, so the drain does not wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

log = logging.getLogger("im.access")
debug = logging.getLogger("im.api")


class Call:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status: int | str = 0


class Calls:
    def __init__(self, access_log: bool = False) -> None:
        self.access_log = access_log
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self, api: str, method: str, peer: str | None) -> Iterator[Call]:
        call = Call()
        self.in_flight += 1
        self._idle.clear()
        start = time.perf_counter()
        try:
            yield call
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()
            if self.access_log or debug.isEnabledFor(logging.DEBUG):
                ms = round((time.perf_counter() - start) * 1000, 3)
                fields = {
                    "event": "api_call", "api": api, "method": method,
                    "status": call.status, "ms": ms, "peer": peer or "",
                }  # fmt: skip
                line = "%s %s %s %s %.3f ms"
                args = (api, method, call.status, peer or "-", ms)
                (log if self.access_log else debug).log(
                    logging.INFO if self.access_log else logging.DEBUG,
                    line, *args, extra={"im": fields},
                )  # fmt: skip

    async def idle(self, timeout: float) -> int:
        """Wait until no call is in flight, at most ``timeout`` seconds; return how
        many still are."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self.in_flight
