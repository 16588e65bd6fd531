"""One call of im's HTTP API (docs/api.md) as ``im-ctl`` makes it.

The whole call, answer included, must finish within the timeout, and an answer
may be at most ``MAX_ANSWER`` bytes: a wrong ``--url`` (a server that never stops
sending) cannot hang the command or fill its memory. Redirects are not followed,
so the API key only ever goes to the server named.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import attrs
import orjson

PREFIX = "/api/v1/"
#: Bytes of one answer at most: a distribution of a million tags fits.
MAX_ANSWER = 64 << 20


class Unreachable(Exception):
    """No usable answer: the connection failed, the time ran out, or the answer
    broke off or was too big."""


@attrs.frozen
class Answer:
    status: int
    reason: str
    #: The JSON object im answered with; None when the body was not one (not im,
    #: or a proxy in front of it).
    document: dict[str, Any] | None


@attrs.frozen
class Api:
    url: str  # the server's base URL, without /api/v1
    key: str | None
    timeout: float
    tls: ssl.SSLContext | None = None  # https: a private CA, a client certificate

    async def call(
        self,
        method: str,
        route: str,
        *,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Answer:
        """``method`` on ``/api/v1/<route>``; ``Unreachable`` without an answer."""
        url = self.url.rstrip("/") + PREFIX + route
        headers = {"X-API-Key": self.key} if self.key else {}
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
                async with session.request(
                    method,
                    url,
                    params=query,
                    json=body,
                    allow_redirects=False,
                    ssl=self.tls if self.tls is not None else True,
                ) as response:
                    raw = await _read(response, self.url)
                    return Answer(response.status, response.reason or "", _object(raw))
        except TimeoutError:
            raise Unreachable(f"{self.url}: no answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"{self.url}: {exc or type(exc).__name__}") from None


async def _read(response: aiohttp.ClientResponse, url: str) -> bytes:
    too_big = Unreachable(f"{url}: answer over {MAX_ANSWER} bytes")
    if (response.content_length or 0) > MAX_ANSWER:
        raise too_big
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > MAX_ANSWER:
            raise too_big
    return bytes(body)


def _object(raw: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None
