"""A small asyncio client for im: connect, receive decoded pushes, ack, reconnect.

    async with Client("ws://127.0.0.1:8080/conn", token="alice") as client:
        msg = await client.receive()
        print(msg.data)
        if msg.sid:
            await client.ack(msg.sid)

The server pings; aiohttp answers with pongs, and ``heartbeat`` makes the client
ping too. After an unexpected close the client reconnects with exponential
backoff, unless the close code says not to (4500-4999, see docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import attrs

from .wire import WIRES, Wire

CODECS = WIRES  # the client side of each codec, by its ``?codec=`` name

__all__ = ["Client", "ConnectError", "Message"]


@attrs.frozen
class Message:
    sid: int
    data: bytes


class ConnectError(Exception):
    """The server refused the connection before the upgrade."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Closed(Exception):
    """The connection closed (and will not be reopened)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"connection closed with {code}")
        self.code = code


class Client:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        codec: str = "json",
        message_type: str | None = None,
        tags: Sequence[str] = (),
        device: str = "",
        auto_ack: bool = False,
        heartbeat: float | None = 30.0,
        reconnect: bool = False,
        backoff: tuple[float, float] = (0.2, 10.0),
        params: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.codec: Wire = CODECS[codec]
        self.params = {"token": token, "codec": codec, **(params or {})}
        if tags:
            self.params["tags"] = ",".join(tags)
        if message_type:
            self.params["message_type"] = message_type
        if device:  # which of the user's devices this is (--max-connections-per-user)
            self.params["device"] = device
        self.auto_ack = auto_ack
        self.heartbeat = heartbeat
        self.reconnect = reconnect
        self.backoff = backoff
        self.close_code: int | None = None
        self.connects = 0
        self._queue: asyncio.Queue[Message | Closed] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._connected = asyncio.Event()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection; raise ConnectError if the server refuses it."""
        self._session = self._session or aiohttp.ClientSession()
        await self._open()
        self._reader = asyncio.ensure_future(self._read_loop())

    async def _open(self) -> None:
        assert self._session is not None
        try:
            self._ws = await self._session.ws_connect(
                self.url, params=self.params, heartbeat=self.heartbeat, autoping=True
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ConnectError(exc.status, exc.message) from None
        self.connects += 1
        self._connected.set()

    async def _read_loop(self) -> None:
        delay = self.backoff[0]
        while True:
            ws = self._ws
            assert ws is not None
            async for msg in ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    data = msg.data.encode() if isinstance(msg.data, str) else msg.data
                    sid, payload = self.codec.decode_push(data)
                    if sid and self.auto_ack:
                        await self.ack(sid)
                    self._queue.put_nowait(Message(sid, payload))
            self.close_code = ws.close_code
            self._connected.clear()
            code = ws.close_code or 1006
            if self._closing or not self.reconnect or 4500 <= code < 5000:
                self._queue.put_nowait(Closed(ws.close_code))
                return
            while not self._closing:
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.backoff[1])
                try:
                    await self._open()
                except (aiohttp.ClientError, ConnectError, OSError):
                    continue
                delay = self.backoff[0]
                break

    async def receive(self, timeout: float | None = 10.0) -> Message:
        """The next push; raises ``Closed`` once the connection is gone for good."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, Closed):
            self._queue.put_nowait(item)
            raise item
        return item

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.receive(timeout=None)
            except Closed:
                return

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        """Wait until the connection is gone for good; return the close code."""
        if self._reader is not None:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    async def ack(self, *sids: int) -> None:
        await self._send(self.codec.encode_client(acks=sids))

    async def send(self, data: bytes) -> None:
        """Business data for the server's receive hook."""
        await self._send(self.codec.encode_client(data=data))

    async def _send(self, frame: bytes) -> None:
        assert self._ws is not None
        if self.codec.text_safe and self.params.get("message_type") != "binary":
            await self._ws.send_str(frame.decode())
        else:
            await self._ws.send_bytes(frame)

    @property
    def ws(self) -> aiohttp.ClientWebSocketResponse:
        assert self._ws is not None
        return self._ws

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (TimeoutError, asyncio.CancelledError):
                pass
        if self._session is not None:
            await self._session.close()
