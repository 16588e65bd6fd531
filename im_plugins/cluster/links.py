"""Direct links between the nodes of one machine: requests over Unix sockets.

``im-run --workers`` gives its workers one private directory (``--node-links``):
node N listens on ``DIR/N.sock``, and a node with a request for node N (a unicast
push to a user there, a duplicate-login hand-over, a kick, a retag) sends it there
instead of through the broker. A request and its answer through NATS cost ~350 µs
of CPU over the two nodes and nats-server; over a Unix socket ~50 µs
(docs/performance.md, "Links between workers").

The frames carry the broker's own wire messages (``wire``), each behind a header of
its length and a request id; the answer comes back under the same id, an empty body
when the request had none. What a link cannot do falls back to the broker, which
answers exactly as before: no socket for N (a node on another machine), a refused
connection (N is gone; tried again after ``RETRY_AFTER``). A link that breaks with
requests in flight fails them (``Unavailable``: they may have run), like a broker
request that times out. Requests on one link run one after another, in the order
sent, as they do from one broker subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import struct
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, cast

from im_core.errors import Unavailable

from . import wire

if TYPE_CHECKING:
    from .base import ClusterBroker

log = logging.getLogger("im.cluster")

HEADER = struct.Struct("!II")  # body length, request id
#: a frame longer than this closes the link (a request is at most a batch of pushes)
MAX_FRAME = 64 << 20
#: seconds a node whose socket refused a connection is asked through the broker
RETRY_AFTER = 1.0


class NoLink:
    """``Links.request``'s answer when node N has no link: ask the broker."""


NO_LINK = NoLink()


class _Frames(asyncio.Protocol):
    """Splits a byte stream into (request id, body) frames."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        at = 0
        while len(buf) - at >= HEADER.size:
            size, rid = HEADER.unpack_from(buf, at)
            if size > MAX_FRAME:
                log.warning("node link: a frame of %d bytes: closed", size)
                self.transport.close()
                return
            end = at + HEADER.size + size
            if len(buf) < end:
                break
            self.frame(rid, bytes(buf[at + HEADER.size : end]))
            at = end
        del buf[:at]

    def frame(self, rid: int, body: bytes) -> None:
        raise NotImplementedError

    def send(self, rid: int, body: bytes) -> None:
        self.transport.write(HEADER.pack(len(body), rid) + body)


class _Answering(_Frames):
    """A peer's connection to this node: its requests, answered in order."""

    def __init__(self, broker: ClusterBroker, open_: set[_Answering]) -> None:
        super().__init__()
        self.broker = broker
        self._open = open_
        self._queue: deque[tuple[int, bytes]] = deque()
        self._worker: asyncio.Task[None] | None = None

    def frame(self, rid: int, body: bytes) -> None:
        self._queue.append((rid, body))
        if self._worker is None or self._worker.done():
            self._worker = self.broker.spawn(self._answer_all())

    async def _answer_all(self) -> None:
        peer = self.broker.peer
        while self._queue:
            rid, body = self._queue.popleft()
            reply = b""
            try:
                read = peer.read(body)
                if read is not None:
                    origin, ref, message = read
                    answer = await peer.answer(origin, message, ref)
                    if answer is not None:
                        reply = wire.encode(answer, self.broker.node_id, ref)
            except Exception:
                log.exception("node link: bad message from a peer")
            if self.transport.is_closing():
                return
            self.send(rid, reply)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)
        self._queue.clear()


class _Asking(_Frames):
    """This node's connection to a peer: its requests' answers, by request id."""

    def __init__(self, links: Links, node: int) -> None:
        super().__init__()
        self.links = links
        self.node = node
        self.waiters: dict[int, asyncio.Future[bytes]] = {}

    def frame(self, rid: int, body: bytes) -> None:
        waiter = self.waiters.pop(rid, None)
        if waiter is not None and not waiter.done():  # else: asked too long ago
            waiter.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.links.lost(self)
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(Unavailable(f"link to node {self.node} closed"))
        self.waiters.clear()


class Links:
    """This node's socket in the links directory and its links to the others."""

    def __init__(self, broker: ClusterBroker, directory: str) -> None:
        self.broker = broker
        self.dir = Path(directory)
        self._server: asyncio.AbstractServer | None = None
        self._answering: set[_Answering] = set()  # peers' links to this node
        self._path: Path | None = None
        self._links: dict[int, asyncio.Task[_Asking | None]] = {}
        self._refused: dict[int, float] = {}  # node -> when to try its socket again
        self._rids = itertools.count(1)

    def _socket(self, node: int) -> Path:
        return self.dir / f"{node}.sock"

    async def listen(self) -> None:
        """Listen on this node's socket (a dead predecessor's file is replaced)."""
        path = self._socket(self.broker.node_id)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        loop = asyncio.get_running_loop()
        answering = self._answering
        self._server = await loop.create_unix_server(
            lambda: _Answering(self.broker, answering), str(path)
        )
        os.chmod(path, 0o600)
        self._path = path

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
        for answering in list(self._answering):  # peers' requests in flight fail now
            answering.transport.close()
        for task in self._links.values():
            task.cancel()
            with contextlib.suppress(BaseException):
                link = await task
                if link is not None:
                    link.transport.close()
        self._links.clear()

    def lost(self, link: _Asking) -> None:
        task = self._links.get(link.node)
        if task is not None and task.done() and not task.cancelled() and task.result() is link:
            del self._links[link.node]

    async def _connect(self, node: int) -> _Asking | None:
        loop = asyncio.get_running_loop()
        try:
            _, link = await loop.create_unix_connection(
                lambda: _Asking(self, node), str(self._socket(node))
            )
        except OSError:  # no such socket here, or nobody listens on it any more
            return None
        return link

    async def request(self, node: int, message: wire.Request) -> wire.Message | NoLink:
        """Send ``message`` to ``node`` over its link and return the answer;
        ``NO_LINK`` when it has none. The caller bounds the wait."""
        task = self._links.get(node)
        if task is None:
            if self._refused.get(node, 0.0) > time.monotonic():
                return NO_LINK
            task = self._links[node] = asyncio.ensure_future(self._connect(node))
        link = await asyncio.shield(task)
        if link is None:
            if self._links.get(node) is task:
                del self._links[node]
                self._refused[node] = time.monotonic() + RETRY_AFTER
            return NO_LINK
        if link.transport.is_closing():
            raise Unavailable(f"link to node {node} closed")
        rid = next(self._rids) & 0xFFFFFFFF
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        link.waiters[rid] = waiter
        try:
            link.send(rid, wire.encode(message, self.broker.node_id))
            body = await waiter
        finally:
            link.waiters.pop(rid, None)
        if not body:
            raise Unavailable(f"node {node} gave no answer to {message.kind!r}")
        read = self.broker.peer.read(body)
        if read is None:
            raise Unavailable(f"node {node} answered what this node cannot read")
        return read[2]
