"""What happens to users, in the log (logger ``im.events``): refusals, connects
(DEBUG), disconnects by the class of their close code, kicks. Lines go through a
``RateLimitedLog``: a flood of one cause (a client retrying a bad token, a mass
disconnect) writes one line per cause per interval, with the count of the rest.
Every line carries structured fields (``extra={"im": {...}}``), shown by
``--log-format json`` (docs/operations.md, "Logs")."""

from __future__ import annotations

import logging

from .errors import CloseCode
from .ratelog import RateLimitedLog

events = RateLimitedLog(logging.getLogger("im.events"))

#: The class of a close code, as the log and the metrics name it.
CLOSE_CLASSES: dict[int, str] = {
    CloseCode.NORMAL: "normal",
    CloseCode.GOING_AWAY: "going_away",
    CloseCode.PROTOCOL_ERROR: "bad_frame",
    CloseCode.INVALID_DATA: "bad_frame",
    CloseCode.MESSAGE_TOO_BIG: "bad_frame",
    CloseCode.INTERNAL_ERROR: "server_error",
    CloseCode.HEARTBEAT_TIMEOUT: "heartbeat",
    CloseCode.SLOW_CONSUMER: "slow_consumer",
    CloseCode.TOO_MANY_FRAMES: "too_many_frames",
    CloseCode.BAD_FRAME: "bad_frame",
    CloseCode.REPLACED: "replaced",
    CloseCode.KICKED: "kicked",
    1006: "lost",  # no close frame: the connection dropped
}


def close_class(code: int) -> str:
    return CLOSE_CLASSES.get(code, "other")
