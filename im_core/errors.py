"""Error types and the WebSocket close-code table.

Close codes follow one rule a client can act on without a lookup table:
4000-4499 means "reconnect (with backoff)", 4500-4999 means "do not reconnect".
"""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """Codes the server closes a WebSocket with (documented in docs/protocol.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect, possibly to another node
    PROTOCOL_ERROR = 1002  # a frame that breaks RFC 6455
    INVALID_DATA = 1007  # a text message (or close reason) that is not UTF-8
    MESSAGE_TOO_BIG = 1009  # client message over max_frame_size or max_fragments
    INTERNAL_ERROR = 1011
    HEARTBEAT_TIMEOUT = 4000  # silent for more than 2 x heartbeat interval: reconnect
    SLOW_CONSUMER = 4001  # send backlog over its bound: reconnect (seen as a reset)
    TOO_MANY_FRAMES = 4002  # over max_inbound_rate: reconnect after a backoff
    BAD_FRAME = 4500  # client frame the codec cannot read: fix the client
    REPLACED = 4501  # the same user logged in again elsewhere: do not fight it
    KICKED = 4502  # removed by a backend


class ConfigError(Exception):
    """The node cannot serve with these options or plugins: ``im-run`` prints the
    message as one line and exits with status 2 before it listens. A plugin raises
    it from ``im_startup`` to refuse to start (say why in one line)."""


class StartupFailed(ConfigError):
    """A plugin's ``im_startup`` raised: the message names the plugin."""

    def __init__(self, plugin: str, exc: BaseException) -> None:
        if isinstance(exc, ConfigError):
            message = f"plugin {plugin!r}: {exc}"
        else:
            message = f"plugin {plugin!r} failed to start: {type(exc).__name__}: {exc}"
        super().__init__(message)
        self.plugin = plugin


class ImError(Exception):
    """Base of errors the push APIs turn into a status (gRPC code / HTTP status)."""

    status = 500
    code = "internal"


class InvalidArgument(ImError):
    status = 400
    code = "invalid_argument"


class PayloadTooLarge(ImError):
    status = 413
    code = "payload_too_large"


class NotFound(ImError):
    status = 404
    code = "not_found"


class Busy(ImError):
    """The broadcast queue is over its high-water mark."""

    status = 429
    code = "resource_exhausted"

    def __init__(self, message: str, queue_length: int) -> None:
        super().__init__(message)
        self.queue_length = queue_length


class Unavailable(ImError):
    """A dependency (the broker) cannot be reached right now."""

    status = 503
    code = "unavailable"


class Unauthenticated(ImError):
    status = 401
    code = "unauthenticated"
