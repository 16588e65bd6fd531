"""A small asyncio client for im: connect, receive decoded pushes, ack, reconnect.

    async with Client("ws://127.0.0.1:8080/conn", token="alice") as client:
        msg = await client.receive()
        print(msg.data)
        if msg.sid:
            await client.ack(msg.sid)

Over TLS, give a ``wss://`` (or ``https://``) URL; ``ssl`` is passed to aiohttp as
it is: ``True`` verifies against the system's CAs, an ``ssl.SSLContext`` against
your own (``ssl.create_default_context(cafile="ca.pem")``, plus a client
certificate with ``load_cert_chain`` if the server asks for one).

The server pings; aiohttp answers with pongs, and ``heartbeat`` makes the client
ping too. With ``reconnect=True`` (off by default) the client reconnects after an
unexpected close with exponential backoff, unless the close code says not to
(4500-4999, see docs/protocol.md). A refused connection raises ``ConnectError``
with the server's status and reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl as _ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import attrs
import orjson

from .wire import WIRES, Wire

CODECS = WIRES  # the client side of each codec, by its ``?codec=`` name

__all__ = ["Client", "ConnectError", "Message"]


@attrs.frozen
class Message:
    sid: int
    data: bytes


MAX_REFUSAL = 64 * 1024  # bytes of a refusal's body read for its reason


class ConnectError(Exception):
    """The server refused the connection before the upgrade: ``status`` is the HTTP
    status, ``reason`` the server's message (``code`` its error code, if it gave one)."""

    def __init__(self, status: int, reason: str, code: str = "") -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.code = code


def _refusal(body: bytes) -> tuple[str, str]:
    """(reason, code) of a refusal's body: im's JSON error, else its text."""
    try:
        error = orjson.loads(body)["error"]
        return str(error["message"]), str(error.get("code", ""))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body.decode(errors="replace").strip(), ""


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
        ssl: _ssl.SSLContext | bool = True,
    ) -> None:
        self.url = url
        self.ssl = ssl
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
        self._refused = b""  # the body of the last refusal

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection; raise ConnectError if the server refuses it (the
        client is then closed: nothing is left open)."""
        if self._session is None:
            # The refusal's body (its reason) is read as the response ends: aiohttp
            # drops it before it raises the handshake error.
            trace = aiohttp.TraceConfig()
            trace.on_request_end.append(self._read_refusal)
            self._session = aiohttp.ClientSession(trace_configs=[trace])
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.ensure_future(self._read_loop())

    async def _read_refusal(
        self, session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestEndParams
    ) -> None:
        response = params.response
        if response.status != 101:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(5):
                    self._refused = await response.content.read(MAX_REFUSAL)

    async def _open(self) -> None:
        assert self._session is not None
        self._refused = b""
        try:
            self._ws = await self._session.ws_connect(
                self.url,
                params=self.params,
                heartbeat=self.heartbeat,
                autoping=True,
                ssl=self.ssl,
            )
        except aiohttp.WSServerHandshakeError as exc:
            reason, code = _refusal(self._refused) if self._refused else (exc.message, "")
            raise ConnectError(exc.status, reason, code) from None
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
