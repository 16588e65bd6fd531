"""JSON error responses: ``{"error": {"code", "message"}}`` plus the original's
``status``/``data`` fields, so both old and new clients can read them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "resource_exhausted",
    500: "internal",
    503: "unavailable",
}


def json_error(status: int, message: str, code: str | None = None, **extra: Any) -> web.Response:
    body = {
        "error": {"code": code or _CODES.get(status, "error"), "message": message, **extra},
        "status": status,
        "data": message,
    }
    return web.json_response(body, status=status)
