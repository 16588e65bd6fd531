"""aiohttp's server log without a traceback per bad request.

aiohttp logs each request it cannot parse ("Error handling request from ...",
with the parser's traceback) at ERROR through ``aiohttp.server``. Anyone who can
reach the port can send those, no credentials needed, so a peer sending garbage
would fill the log. ``QuietServerLog`` takes that logger's place in aiohttp's
request handler (``web.Application(handler_args={"logger": ...})``, see
``HttpTransport.build_app``):

- a bad request (``HttpProcessingError``, a dropped connection) is one line
  without traceback, at INFO (DEBUG where aiohttp chose DEBUG);
- anything else keeps its level and traceback: it is a bug worth seeing;
- either kind writes at most ``burst`` lines per ``period`` seconds; the lines
  left out are counted and the count is added to the next line written.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

#: Exceptions that say the peer sent something wrong or went away.
CLIENT_ERRORS = (HttpProcessingError, ConnectionError)
_MAX_DETAIL = 200  # characters of the exception text kept in the line


class RateLimit:
    """At most ``burst`` events per ``period`` seconds, counting the refused ones."""

    def __init__(self, burst: int, period: float, clock: Callable[[], float]) -> None:
        self.burst = burst
        self.period = period
        self.clock = clock
        self.suppressed = 0
        self._start = -period
        self._count = 0

    def allow(self) -> int | None:
        """None when refused, else how many were refused since the last allowed."""
        now = self.clock()
        if now - self._start >= self.period:
            self._start, self._count = now, 0
        if self._count >= self.burst:
            self.suppressed += 1
            return None
        self._count += 1
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


class QuietServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A stand-in for ``aiohttp.server`` in aiohttp's ``RequestHandler``."""

    def __init__(
        self,
        logger: logging.Logger = server_logger,
        *,
        burst: int = 5,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger, {})
        self._client = RateLimit(burst, period, clock)
        self._other = RateLimit(burst, period, clock)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = _exception(kwargs.get("exc_info"))
        if isinstance(exc, CLIENT_ERRORS):
            self._client_error(min(level, logging.INFO), msg, args, exc)
        elif level < logging.INFO:
            self.logger.log(level, msg, *args, **kwargs)  # aiohttp's debug chatter
        elif self.isEnabledFor(level) and (suppressed := self._other.allow()) is not None:
            self.logger.log(level, f"{msg}{_more(suppressed)}", *args, **kwargs)

    def _client_error(
        self, level: int, msg: object, args: tuple[object, ...], exc: BaseException
    ) -> None:
        if not self.isEnabledFor(level) or (suppressed := self._client.allow()) is None:
            return
        text = str(msg) % args if args else str(msg)
        self.logger.log(level, "%s: %s%s", text, _one_line(exc), _more(suppressed))


def _exception(exc_info: Any) -> BaseException | None:
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1]
    return None


def _more(suppressed: int) -> str:
    return f" ({suppressed} similar lines suppressed)" if suppressed else ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."
