"""The front protocol: which upgrade requests skip aiohttp, and that the rest reach it."""

from __future__ import annotations

import pytest

from im_core import Server
from im_plugins.http import front

from .conftest import eventually
from .test_websocket_protocol import RawClient, _raw_http, _upgrade


def test_parse_upgrade_takes_plain_requests_only() -> None:
    head = _upgrade("/conn?token=a&codec=json")[:-4]
    path, query, headers = front.parse_upgrade(head)  # type: ignore[misc]
    assert (path, query) == ("/conn", "token=a&codec=json")
    assert headers["upgrade"] == "websocket" and headers["SEC-WEBSOCKET-VERSION"] == "13"
    assert front.parse_upgrade(head.replace(b"HTTP/1.1", b"HTTP/1.0")) is None
    assert front.parse_upgrade(head.replace(b"GET /conn", b"GET /ping")) is None
    assert front.parse_upgrade(head + b"\r\nContent-Length: 0") is None
    assert front.parse_upgrade(head + b"\r\n folded") is None


@pytest.fixture
def handed_to_aiohttp(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    seen: list[bytes] = []
    original = front.FrontProtocol._to_aiohttp

    def spy(self: front.FrontProtocol) -> None:
        seen.append(self._buf)
        original(self)

    monkeypatch.setattr(front.FrontProtocol, "_to_aiohttp", spy)
    return seen


async def test_whole_upgrade_request_skips_aiohttp(server: Server, handed_to_aiohttp) -> None:
    client = await RawClient.open(server, "alice")
    await eventually(lambda: server.local_count() == 1)
    assert handed_to_aiohttp == []
    client.close()


async def test_partial_request_goes_to_aiohttp_and_upgrades(
    server: Server, handed_to_aiohttp
) -> None:
    head = await _raw_http(server, _upgrade("/conn?token=bob"), split=7)
    assert head.startswith(b"HTTP/1.1 101")
    await eventually(lambda: server.buckets.get("bob"))
    assert handed_to_aiohttp == [b"GET /co"]
