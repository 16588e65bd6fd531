"""Connections: admission (the validate hook, codec choice), registration, inbound
messages and the one disconnect path. Transports call it as ``server.connections``.

A transport validates an attempt with ``authenticate`` and ``format_for`` before it
answers the client, then hands the socket over with ``attach``; from then on it
passes each data message to ``on_frame`` in order, and closes through the
``Connection`` (its closer), which ends in ``_detach`` once.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import attrs

from .ack import Unacked
from .broker import Kept, Presence
from .codec import BadFrame
from .connection import NO_TAGS, Closer, Connection, Format, Writer
from .errors import CloseCode, InvalidArgument
from .events import close_class, events
from .identity import ConnectRequest, Identity, Reject
from .options import MESSAGE_TYPES

if TYPE_CHECKING:
    from .server import Server
    from .transport import Framing

log = logging.getLogger("im.server")


class Rejected(Exception):
    """A connection attempt the validate hook refused."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(reject.reason)
        self.reject = reject


def presence_of(conn: Connection, node_id: int) -> Presence:
    """What the cluster knows of a connection."""
    return Presence(
        conn.user_id,
        node_id,
        conn.conn_id,
        tuple(sorted(conn.tags)),
        conn.connected_at,
        conn.device,
    )


class Connections:
    def __init__(self, server: Server) -> None:
        self._server = server
        self._formats: dict[tuple[str, bool, Framing], Format] = {}
        self._ids = itertools.count(1)
        self._on_close = self._detach  # one bound method for every connection

    async def authenticate(self, request: ConnectRequest) -> Identity:
        """Run the validate hook; raise ``Rejected`` unless it returns an Identity."""
        server = self._server
        result = await server.hooks.validate(server, request)
        if isinstance(result, Identity):
            opts = server.options
            device = result.device or request.query.get("device", "")
            if len(result.user_id) > opts.max_user_id_length:
                result = Reject(f"user id longer than {opts.max_user_id_length} characters", 400)
            elif len(device) > opts.max_user_id_length:
                result = Reject(f"device longer than {opts.max_user_id_length} characters", 400)
            elif len(result.tags) > opts.max_tags:
                result = Reject(f"more than {opts.max_tags} tags", 400)
            elif opts.max_connections_per_user == 1:
                return attrs.evolve(result, device="")  # one device: it has no name
            else:
                return attrs.evolve(result, device=device)
        if result is None:
            result = Reject("no validate plugin accepted the credentials", 401)
        elif not isinstance(result, Reject):
            log.error(
                "plugin bug: im_validate returned %s, not Identity, Reject or None",
                type(result).__name__,
            )
            result = Reject("internal error", 500)
        await server.hooks.validate_failed(server, request, result)
        raise Rejected(result)

    def format_for(
        self, codec: str | None, message_type: str | None, framing: Framing
    ) -> Format:
        """The format a connection asked for (``None`` = server default) on the
        client transport whose wire ``framing`` describes."""
        server = self._server
        name = codec or server.options.codec
        found = server.codecs.get(name)
        if found is None:
            raise InvalidArgument(f"codec: unknown codec {name!r} (known: {sorted(server.codecs)})")
        if message_type is None:
            binary = server.options.message_type == "binary" or not found.text_safe
        elif message_type in MESSAGE_TYPES:
            binary = message_type == "binary"
        else:
            raise InvalidArgument(f"message_type: must be one of {MESSAGE_TYPES}")
        if not binary and not found.text_safe:
            raise InvalidArgument(f"message_type: codec {name!r} needs binary frames")
        key = (name, binary, framing)
        fmt = self._formats.get(key)
        if fmt is None:
            fmt = self._formats[key] = Format(found, binary, framing)
        return fmt

    async def attach(
        self,
        identity: Identity,
        fmt: Format,
        transport: Writer,
        closer: Closer,
        remote: str | None = None,
    ) -> Connection:
        """Register an upgraded socket; replace any older login of the same user."""
        server = self._server
        opts = server.options
        conn = Connection(
            conn_id=f"{server.node_id}-{next(self._ids)}",
            user_id=identity.user_id,
            tags=NO_TAGS,
            meta=dict(identity.meta),
            fmt=fmt,
            transport=transport,
            closer=closer,
            outbox=server.outbox,
            on_close=self._on_close,
            now=server.loop.time(),
            limit_frames=opts.client_buffer,
            limit_bytes=opts.client_buffer_bytes,
            remote=remote,
            device=identity.device,
        )
        server.metrics.opened(fmt)  # closed in _detach, which every connection reaches
        conn.hold()  # pushes from now on wait behind what the user missed
        for old in server.buckets.add(conn, opts.max_connections_per_user):
            old.close(CloseCode.REPLACED, "replaced by a new login")
        server.tags.add(conn, identity.tags, time.time())
        broker = server.broker
        assert broker is not None
        try:
            await broker.connected(presence_of(conn, server.node_id))
            owed = await broker.owed(conn.user_id, tuple(sorted(conn.tags)))
            await server.hooks.connected(server, conn)
        except Exception:
            conn.close(CloseCode.INTERNAL_ERROR, "server error while connecting")
            for entry in server.acks.pending(conn.user_id):
                entry.queued = False  # that queue is gone: the next connection catches up
            raise
        self._catch_up(conn, owed)
        if events.enabled(logging.DEBUG):
            events.debug(
                "connected %s", conn.user_id,
                extra={"im": {
                    "event": "connect", "user": conn.user_id, "device": conn.device,
                    "conn": conn.conn_id, "format": repr(fmt), "remote": remote or "",
                }},
            )  # fmt: skip
        return conn

    def _catch_up(self, conn: Connection, kept: list[Kept]) -> None:
        """Send the user's unacked and kept messages, oldest first, then release
        what was pushed meanwhile: the entries this node tracks (its own, handed
        over by another node, parked in its inbox) and those the broker kept (a
        durable broker's copies, missed tag pushes)."""
        acks = self._server.acks
        user, device, fmt = conn.user_id, conn.device, conn.fmt
        for k in kept:  # None: tracked here already
            acks.adopt(user, k.sid, k.payload, k.tries, k.at, device)
        pending = acks.owed(user, device)
        if kept:  # in the order they were pushed in (stable: ties keep the tracker's)
            pending.sort(key=lambda entry: entry.at)
        first: list[bytes] = []

        def send(entry: Unacked) -> bool:
            first.append(fmt.build(entry.sid, entry.payload))
            return True

        for entry in pending:
            if entry.queued:  # pushed during the setup: it waits in the queue already
                entry.queued = False
                continue
            acks.redeliver(entry, send)
        conn.release(first)

    def _detach(
        self, conn: Connection, code: int, reason: str, received: Awaitable[Any] | None
    ) -> None:
        """Every closed connection passes here once (``Connection.close``).

        ``received`` (from the transport's closer) completes once every message the
        client sent before the close went to ``im_receive``; the disconnect hook
        waits for it.
        """
        server = self._server
        server.metrics.closed(conn.fmt)
        if server.buckets.remove(conn) and server.broker is not None:
            server.spawn(server.broker.disconnected(presence_of(conn, server.node_id)))
        server.tags.leave_all(conn)
        kind = close_class(code)
        events.info(
            f"disconnect:{kind}", "disconnected %s: %d %s (%s)", conn.user_id, code, kind, reason,
            extra={"im": {
                "event": "disconnect", "user": conn.user_id, "conn": conn.conn_id,
                "code": code, "class": kind, "reason": reason,
            }},
        )  # fmt: skip
        server.spawn(self._disconnected(conn, code, reason, received))

    async def _disconnected(
        self, conn: Connection, code: int, reason: str, received: Awaitable[Any] | None
    ) -> None:
        server = self._server
        if received is not None:
            await received
        await server.hooks.disconnected(server, conn, code, reason)

    async def on_frame(self, conn: Connection, data: bytes, binary: bool = False) -> None:
        """A data message from a client (the transport already refreshed liveness).

        Transports call it in arrival order, also for messages that arrived before
        the connection closed (``im_disconnected`` waits for them).
        """
        server = self._server
        server.metrics.inbound_frames += 1
        try:
            frame = conn.fmt.codec.decode_client(data)
        except BadFrame as exc:
            conn.close(CloseCode.BAD_FRAME, f"bad frame: {exc}")
            return
        for sid in frame.acks:
            server.acks.ack(conn.user_id, sid, conn.device)
        if frame.data is not None and server.hooks.has_receive:
            try:
                await server.hooks.receive(server, conn, frame.data, binary)
            except Exception:
                # One failing message must not cost the user the connection.
                log.exception("im_receive failed for %s", conn.user_id)
