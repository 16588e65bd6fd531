"""One implementation per im.v1.Im method, on its request and reply messages.

Requests arrive checked (``rules.check`` for gRPC, the JSON decoder for HTTP); what
is left here are the rules that span fields (one push target, add or remove) and
the calls into the core. ``push`` is the streaming push's target dispatch, used by
gRPC ``PushStream`` and HTTP ``push_stream`` alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from im_core.ack import AckOutcome
from im_core.errors import InvalidArgument, NotFound
from im_core.metrics import outcome_of
from im_plugins.pb import im_v1_pb2 as pb

from .rules import match

if TYPE_CHECKING:
    from im_core.server import Server

from im_core.server import PushResult

OUTCOME = {"acked": pb.ACKED, "expired": pb.EXPIRED}


def store(
    request: pb.PushUserRequest | pb.PushUsersRequest | pb.PushTagsRequest | pb.StreamPush,
) -> bool | None:
    """The request's ``store`` flag; None (the server's ``--store``) when unset."""
    return request.store if request.HasField("store") else None


#: ``node_id`` of an offline user: node ids start at 0, so 0 would name a real node.
NO_NODE = -1

#: The push methods of both APIs (im.v1.Im and the original's im.basic.Basic) and
#: the kind of push each makes, for ``server.metrics.push_call``.
PUSH_KINDS = {
    "PushUser": "user",
    "SendMessage": "user",
    "PushUsers": "users",
    "SendMessageToMultiple": "users",
    "Broadcast": "broadcast",
    "PushTags": "tags",
    "PushByTag": "tags",
    "WTIBroadcast": "tags",
}


def stream_kind(request: pb.StreamPush) -> str:
    """The kind of push one line of a push stream makes (``none``: no target);
    for a line refused before it is pushed (``push`` counts the others)."""
    if request.users:
        return "users"
    if request.tags:
        return "tags"
    return "broadcast" if request.all else "none"


#: Counts one push of a stream: ``count(kind, outcome)`` (``Metrics.stream``).
Count = Callable[[str, str], None]


class ImMethods:
    """The unary methods of ``im.v1.Im`` (named as in the proto) and ``push``."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def Ping(self, request: pb.PingRequest) -> pb.PingReply:
        return pb.PingReply(node_id=self.server.node_id)

    async def PushUser(self, request: pb.PushUserRequest) -> pb.PushReply:
        result = await self.server.push(
            request.user, request.data, ack=request.ack, store=store(request)
        )
        if result.missing:
            raise NotFound(f"user {request.user!r} is not online")
        return pb.PushReply(sid=result.sid, stored=result.stored)

    async def PushUsers(self, request: pb.PushUsersRequest) -> pb.PushReply:
        result = await self.server.push(
            request.users, request.data, ack=request.ack, store=store(request)
        )
        return pb.PushReply(sid=result.sid, missing=result.missing, stored=result.stored)

    async def PushTags(self, request: pb.PushTagsRequest) -> pb.QueuedReply:
        queued = self.server.push_tags(
            request.tags,
            request.data,
            match=match(request.match),
            ack=request.ack,
            store=store(request),
        )
        return pb.QueuedReply(sid=queued.sid, queue_length=queued.queue_length)

    async def PushByTag(self, request: pb.PushByTagRequest) -> pb.QueuedReply:
        return pb.QueuedReply(queue_length=self.server.push_by_tag(dict(request.contents)))

    async def Broadcast(self, request: pb.BroadcastRequest) -> pb.QueuedReply:
        queued = self.server.broadcast(request.data, ack=request.ack)
        return pb.QueuedReply(sid=queued.sid, queue_length=queued.queue_length)

    async def push(self, request: pb.StreamPush, count: Count) -> PushResult:
        """One push of a stream to its target: its sid, the users not reached and
        those it was kept for. ``count(kind, outcome)`` counts it (the stream's
        ``server.metrics.stream``): the kind is known here, from the target."""
        server, data, ack = self.server, request.data, request.ack
        users = request.users
        kind = "users" if users else "tags" if request.tags else "broadcast"
        try:
            if users:
                result = await server.push(users, data, ack=ack, store=store(request))
            elif request.tags:
                tags, how = request.tags, match(request.match)
                queued = server.push_tags(tags, data, match=how, ack=ack, store=store(request))
                result = PushResult(queued.sid)
            elif request.all:
                result = PushResult(server.broadcast(data, ack=ack).sid)
            else:
                kind = "none"
                raise InvalidArgument("target: one of users, tags or all is required")
        except BaseException as exc:
            count(kind, outcome_of(exc))
            raise
        count(kind, "ok")
        return result

    async def Kick(self, request: pb.KickRequest) -> pb.KickReply:
        if not await self.server.kick(request.user, request.reason or "kicked"):
            raise NotFound(f"user {request.user!r} is not online")
        return pb.KickReply()

    async def Presence(self, request: pb.PresenceRequest) -> pb.PresenceReply:
        devices = await self.server.devices(request.user)
        if not devices:  # node ids start at 0: an offline user is on node -1 (none)
            return pb.PresenceReply(online=False, node_id=NO_NODE)
        newest = max(devices, key=lambda d: d.connected_at)
        return pb.PresenceReply(
            online=True,
            node_id=newest.node_id,
            conn_id=newest.conn_id,
            tags=newest.tags,
            connected_at=newest.connected_at,
            devices=[
                pb.Device(
                    device=d.device,
                    node_id=d.node_id,
                    conn_id=d.conn_id,
                    tags=d.tags,
                    connected_at=d.connected_at,
                )
                for d in devices
            ],
        )

    async def Retag(self, request: pb.RetagRequest) -> pb.RetagReply:
        if not request.add and not request.remove:
            raise InvalidArgument("add, remove: at least one tag to add or remove is required")
        if not await self.server.retag(request.user, request.add, request.remove):
            raise NotFound(f"user {request.user!r} is not online")
        return pb.RetagReply()

    async def Distribution(self, request: pb.DistributionRequest) -> pb.DistributionReply:
        stats = await self.server.distribution()
        return pb.DistributionReply(
            tags=[pb.TagStat(tag=s.tag, number=s.number, created=s.created) for s in stats.values()]
        )

    async def Stats(self, request: pb.StatsRequest) -> pb.StatsReply:
        return pb.StatsReply(**attrs.asdict(await self.server.stats()))

    async def Nodes(self, request: pb.NodesRequest) -> pb.NodesReply:
        nodes = await self.server.nodes()
        return pb.NodesReply(nodes=[pb.NodeInfo(**attrs.asdict(n)) for n in nodes])


def ack_event(outcome: AckOutcome) -> pb.AckEvent:
    """The ``AckEvents`` message of one outcome (both APIs stream this)."""
    return pb.AckEvent(
        outcome=OUTCOME[outcome.outcome],
        user=outcome.user_id,
        sid=outcome.sid,
        tries=outcome.tries,
        reason=outcome.reason,
        data=outcome.payload,
        device=outcome.device,
    )
