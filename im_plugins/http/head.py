"""HTTP/1.1 request heads and the WebSocket upgrade rules: one answer per request.

Every socket on the HTTP port starts in ``front.FrontProtocol``, which collects the
first request head whole (however TCP splits it) and parses it here, strictly
(RFC 9112): a head im refuses is refused the same way whether it came in one read
or byte by byte. ``check_request`` and ``accept_key`` hold the WebSocket rules (RFC 6455 4.2.1);
the aiohttp route for upgrades that arrive later on a keep-alive connection uses
the same functions in the same order, so both paths give the same answer.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Field values: visible ASCII, space, tab and obs-text; no other control byte.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
# Every field line at once: a token, a colon, a value without control bytes, CRLF.
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
WS_VERSION = "13"


class BadRequest(Exception):
    """A request answered with ``status`` and a JSON error body (``code`` names the
    error; default: by status), then closed."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})


class Head:
    """A parsed request head (the request line and header fields)."""

    __slots__ = ("headers", "method", "path", "query", "version")

    def __init__(
        self, method: str, path: str, query: str, version: str, headers: CIMultiDict[str]
    ) -> None:
        self.method, self.path, self.query, self.version = method, path, query, version
        self.headers = CIMultiDictProxy(headers)


def parse_head(raw: bytes, max_headers: int) -> Head:
    """Parse ``raw`` (a head without its final CRLF CRLF); raise ``BadRequest``."""
    request_line, sep, fields = raw.partition(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _TARGET.match(parts[1]):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in VERSIONS:
        raise BadRequest(505 if version.startswith(b"HTTP/") else 400, "unsupported HTTP version")
    pairs: list[tuple[str, str]] = []
    if sep:
        fields += b"\r\n"
        if fields.count(b"\r\n") > max_headers:
            raise BadRequest(431, f"too many header fields (at most {max_headers})")
        if not _FIELDS.fullmatch(fields):  # one linear pass; the slow path says why
            _diagnose(fields)
        # Names are ASCII tokens by now; values are read as aiohttp reads them.
        for line in fields.decode("utf-8", "surrogateescape").split("\r\n")[:-1]:
            name, _, value = line.partition(":")
            pairs.append((name, value.strip(" \t")))
    path, _, query = target.partition(b"?")
    return Head(
        method.decode("ascii"),
        path.decode("ascii"),
        query.decode("ascii"),
        version.decode("ascii"),
        CIMultiDict(pairs),
    )


def _diagnose(fields: bytes) -> None:
    for line in fields.split(b"\r\n")[:-1]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise BadRequest(400, "malformed header field")
        if _BAD_VALUE.search(value):
            raise BadRequest(400, "control character in a header value")
    raise BadRequest(400, "malformed header field")  # e.g. a bare CR or LF


def _single(headers: Mapping[str, str], name: str) -> str | None:
    values = headers.getall(name, [])  # type: ignore[attr-defined]
    if len(values) > 1:
        raise BadRequest(400, f"more than one {name} header")
    return values[0] if values else None


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


def check_request(method: str, version: str, headers: Mapping[str, str]) -> None:
    """The HTTP side of an upgrade request (checked before the validate hook runs)."""
    if method != "GET":
        raise BadRequest(405, "this endpoint takes GET (a WebSocket upgrade)", {"Allow": "GET"})
    if version != "HTTP/1.1":
        raise BadRequest(400, "a WebSocket upgrade needs HTTP/1.1")
    if not _single(headers, "Host"):
        raise BadRequest(400, "Host header required")
    length = _single(headers, "Content-Length")
    if (length is not None and length != "0") or "Transfer-Encoding" in headers:
        raise BadRequest(400, "an upgrade request has no body")


def accept_key(headers: Mapping[str, str]) -> bytes:
    """``Sec-WebSocket-Accept`` for a valid upgrade request (checked after the
    validate hook, so a refused client learns why first); else raise BadRequest."""
    if "websocket" not in _tokens(_single(headers, "Upgrade")) or "upgrade" not in _tokens(
        ", ".join(headers.getall("Connection", []))  # type: ignore[attr-defined]
    ):
        raise BadRequest(400, "this endpoint needs a WebSocket upgrade request")
    if _single(headers, "Sec-WebSocket-Version") != WS_VERSION:
        raise BadRequest(
            426, "unsupported WebSocket version (13 only)", {"Sec-WebSocket-Version": WS_VERSION}
        )
    key = (_single(headers, "Sec-WebSocket-Key") or "").encode("utf-8", "surrogateescape")
    try:
        if len(binascii.a2b_base64(key, strict_mode=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        raise BadRequest(400, "Sec-WebSocket-Key must be 16 bytes in base64") from None
    return binascii.b2a_base64(hashlib.sha1(key + _GUID).digest(), newline=False)
