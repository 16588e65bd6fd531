"""Log lines that abuse cannot multiply: at most one per cause per interval.

A client that sends a thousand bad requests a second must not write a thousand
log lines: the first of a cause is logged, the rest of that interval are counted
and reported with the next line of the same cause ("... (37 more since)").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

#: Causes remembered at most; an attacker inventing causes cannot grow the table.
MAX_CAUSES = 1024


class RateLimitedLog:
    __slots__ = ("_clock", "_interval", "_logger", "_seen")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._seen: dict[str, list[float | int]] = {}  # cause -> [last logged, suppressed]

    def log(self, level: int, cause: str, msg: str, *args: Any, **kw: Any) -> bool:
        """Log ``msg`` unless ``cause`` was logged less than an interval ago.

        Returns whether the line was written. ``exc_info`` and other keywords pass
        through to the logger.
        """
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        entry = self._seen.get(cause)
        if entry is not None and now - entry[0] < self._interval:
            entry[1] += 1
            return False
        suppressed = int(entry[1]) if entry is not None else 0
        if entry is None and len(self._seen) >= MAX_CAUSES:
            self._forget(now)
        self._seen[cause] = [now, 0]
        if suppressed:
            msg += " (%d more since)"
            args = (*args, suppressed)
        self._logger.log(level, msg, *args, **kw)
        return True

    def enabled(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        """Not limited: DEBUG is asked for."""
        self._logger.debug(msg, *args, **kw)

    def info(self, cause: str, msg: str, *args: Any, **kw: Any) -> bool:
        return self.log(logging.INFO, cause, msg, *args, **kw)

    def warning(self, cause: str, msg: str, *args: Any, **kw: Any) -> bool:
        return self.log(logging.WARNING, cause, msg, *args, **kw)

    def error(self, cause: str, msg: str, *args: Any, **kw: Any) -> bool:
        return self.log(logging.ERROR, cause, msg, *args, **kw)

    def _forget(self, now: float) -> None:
        """Drop causes quiet for an interval; if none are, drop them all."""
        stale = [c for c, (last, _) in self._seen.items() if now - last >= self._interval]
        for cause in stale or list(self._seen):
            del self._seen[cause]
