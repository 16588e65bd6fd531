"""The API key rule both push APIs follow: the ``X-API-Key`` header (gRPC metadata
``x-api-key``) if present, else ``Authorization: Bearer KEY``. A present but wrong
``X-API-Key`` is refused even when the Bearer token is right, so a caller gets the
same answer from HTTP and gRPC."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

BEARER = "Bearer "


def presented(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key a caller presented, or None."""
    if x_api_key is not None:
        return x_api_key
    if authorization is not None and authorization.startswith(BEARER):
        return authorization[len(BEARER) :]
    return None


def key_matches(key: bytes, x_api_key: str | None, authorization: str | None) -> bool:
    """Constant-time check of what the caller presented against ``key``.

    Header values that are not UTF-8 reach Python as surrogate escapes; encoding
    them back the same way compares the bytes that were sent instead of failing.
    """
    given = presented(x_api_key, authorization)
    if given is None:
        return False
    return hmac.compare_digest(key, given.encode("utf-8", "surrogateescape"))


def metadata_matches(key: bytes, metadata: Iterable[tuple[str, str | bytes]]) -> bool:
    """``key_matches`` over gRPC invocation metadata (the first value of each name)."""
    x_api_key: str | None = None
    authorization: str | None = None
    for name, value in metadata:
        if not isinstance(value, str):
            continue  # a -bin value is never a key
        if name == "x-api-key" and x_api_key is None:
            x_api_key = value
        elif name == "authorization" and authorization is None:
            authorization = value
    return key_matches(key, x_api_key, authorization)
