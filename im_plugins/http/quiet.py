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
- either kind writes at most one line per cause per interval
  (``im_core.ratelog``); the lines left out are counted in the next one.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

from im_core.ratelog import RateLimitedLog

#: Exceptions that say the peer sent something wrong or went away.
CLIENT_ERRORS = (HttpProcessingError, ConnectionError)
_MAX_DETAIL = 200  # characters of the exception text kept in the line


class QuietServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A stand-in for ``aiohttp.server`` in aiohttp's ``RequestHandler``."""

    def __init__(self, logger: logging.Logger = server_logger, interval: float = 10.0) -> None:
        super().__init__(logger, {})
        self._limited = RateLimitedLog(logger, interval)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = _exception(kwargs.get("exc_info"))
        if isinstance(exc, CLIENT_ERRORS):
            text = str(msg) % args if args else str(msg)
            cause = f"bad request {type(exc).__name__}"
            self._limited.log(min(level, logging.INFO), cause, "%s: %s", text, _one_line(exc))
        elif level < logging.INFO:
            self.logger.log(level, msg, *args, **kwargs)  # aiohttp's debug chatter
        else:  # a bug worth seeing, with its traceback, but not a flood of them
            self._limited.log(level, f"error {msg}", str(msg), *args, **kwargs)


def _exception(exc_info: Any) -> BaseException | None:
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        exc = exc_info[1]  # None from sys.exc_info() outside an except block
        return exc if isinstance(exc, BaseException) else None
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."
