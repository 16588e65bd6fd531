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
    408: "request_timeout",
    413: "payload_too_large",
    426: "upgrade_required",
    429: "resource_exhausted",
    431: "headers_too_large",
    500: "internal",
    503: "unavailable",
    505: "http_version_not_supported",
}


def error_body(status: int, message: str, code: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "error": {"code": code or _CODES.get(status, "error"), "message": message, **extra},
        "status": status,
        "data": message,
    }


def json_error(status: int, message: str, code: str | None = None, **extra: Any) -> web.Response:
    return web.json_response(error_body(status, message, code, **extra), status=status)
