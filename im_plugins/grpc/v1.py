"""``im.v1.Im``: the extended push API. Each method calls the core once; the HTTP
API (``im_plugins.http.api``) mirrors it route for route."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from im_core.errors import ImError, InvalidArgument, NotFound
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

from .errors import abort, unary

if TYPE_CHECKING:
    from im_core.server import Server

MATCH = {pb.MATCH_ANY: "any", pb.MATCH_ALL: "all"}
OUTCOME = {"acked": pb.ACKED, "expired": pb.EXPIRED}
Context = grpc.aio.ServicerContext


def _data(data: bytes) -> bytes:
    if not data:
        raise InvalidArgument("data: required (non-empty bytes)")
    return data


def _match(value: int) -> str:
    try:
        return MATCH[value]
    except KeyError:
        raise InvalidArgument(f"match: unknown value {value}") from None


class ImServicer(im_v1_pb2_grpc.ImServicer):
    def __init__(self, server: Server) -> None:
        self.server = server

    async def Ping(self, request: pb.PingRequest, context: Context) -> pb.PingReply:
        return pb.PingReply(node_id=self.server.node_id)

    @unary
    async def PushUser(self, request: pb.PushUserRequest, context: Context) -> pb.PushReply:
        if not request.user:
            raise InvalidArgument("user: required")
        sid = await self.server.push_one(request.user, _data(request.data), ack=request.ack)
        return pb.PushReply(sid=sid)

    @unary
    async def PushUsers(self, request: pb.PushUsersRequest, context: Context) -> pb.PushReply:
        if not request.users:
            raise InvalidArgument("users: required (at least one user id)")
        result = await self.server.push(request.users, _data(request.data), ack=request.ack)
        return pb.PushReply(sid=result.sid, missing=result.missing)

    @unary
    async def PushTags(self, request: pb.PushTagsRequest, context: Context) -> pb.QueuedReply:
        queued = self.server.push_tags(
            request.tags, _data(request.data), match=_match(request.match), ack=request.ack
        )
        return pb.QueuedReply(sid=queued.sid, queue_length=queued.queue_length)

    @unary
    async def PushByTag(self, request: pb.PushByTagRequest, context: Context) -> pb.QueuedReply:
        if not request.contents:
            raise InvalidArgument("contents: required (tag -> data)")
        contents = {tag: _data(data) for tag, data in request.contents.items()}
        return pb.QueuedReply(queue_length=self.server.push_by_tag(contents))

    @unary
    async def Broadcast(self, request: pb.BroadcastRequest, context: Context) -> pb.QueuedReply:
        queued = self.server.broadcast(_data(request.data), ack=request.ack)
        return pb.QueuedReply(sid=queued.sid, queue_length=queued.queue_length)

    async def PushStream(
        self, batches: AsyncIterator[pb.PushBatch], context: Context
    ) -> AsyncIterator[pb.StreamResult]:
        server = self.server
        seq = -1
        try:
            async for batch in batches:
                for request in batch.pushes:
                    seq += 1
                    try:
                        data = _data(request.data)
                        if request.users:
                            result = await server.push(request.users, data, ack=request.ack)
                            sid, missing = result.sid, result.missing
                        elif request.tags:
                            match = _match(request.match)
                            queued = server.push_tags(
                                request.tags, data, match=match, ack=request.ack
                            )
                            sid, missing = queued.sid, ()
                        elif request.all:
                            sid, missing = server.broadcast(data, ack=request.ack).sid, ()
                        else:
                            raise InvalidArgument("target: one of users, tags or all is required")
                    except ImError as exc:
                        error = pb.Error(code=exc.code, message=str(exc))
                        yield pb.StreamResult(seq=seq, error=error)
                        continue
                    if sid or missing:  # no news, no reply: the fast path writes nothing
                        yield pb.StreamResult(seq=seq, sid=sid, missing=missing)
        except Exception as exc:
            await abort(context, exc)

    @unary
    async def Kick(self, request: pb.KickRequest, context: Context) -> pb.KickReply:
        if not request.user:
            raise InvalidArgument("user: required")
        if not await self.server.kick(request.user, request.reason or "kicked"):
            raise NotFound(f"user {request.user!r} is not online")
        return pb.KickReply()

    @unary
    async def Presence(self, request: pb.PresenceRequest, context: Context) -> pb.PresenceReply:
        if not request.user:
            raise InvalidArgument("user: required")
        found = await self.server.presence(request.user)
        if found is None:
            return pb.PresenceReply(online=False)
        return pb.PresenceReply(
            online=True,
            node_id=found.node_id,
            conn_id=found.conn_id,
            tags=found.tags,
            connected_at=found.connected_at,
        )

    @unary
    async def Retag(self, request: pb.RetagRequest, context: Context) -> pb.RetagReply:
        if not request.user:
            raise InvalidArgument("user: required")
        if not request.add and not request.remove:
            raise InvalidArgument("add, remove: at least one tag to add or remove is required")
        if not await self.server.retag(request.user, request.add, request.remove):
            raise NotFound(f"user {request.user!r} is not online")
        return pb.RetagReply()

    @unary
    async def Distribution(
        self, request: pb.DistributionRequest, context: Context
    ) -> pb.DistributionReply:
        stats = await self.server.distribution()
        return pb.DistributionReply(
            tags=[pb.TagStat(tag=s.tag, number=s.number, created=s.created) for s in stats.values()]
        )

    @unary
    async def Stats(self, request: pb.StatsRequest, context: Context) -> pb.StatsReply:
        s = await self.server.stats()
        return pb.StatsReply(
            node_id=s.node_id,
            online=s.online,
            connections=s.connections,
            queue_length=s.queue_length,
            queue_capacity=s.queue_capacity,
            unacked=s.unacked,
            tag_groups=s.tag_groups,
        )

    async def AckEvents(
        self, request: pb.AckEventsRequest, context: Context
    ) -> AsyncIterator[pb.AckEvent]:
        subscription = self.server.outcomes.subscribe()
        try:
            await context.send_initial_metadata(())  # tells the caller it is subscribed
            async for event in subscription:
                yield pb.AckEvent(
                    outcome=OUTCOME[event.outcome],
                    user=event.user_id,
                    sid=event.sid,
                    tries=event.tries,
                    reason=event.reason,
                    data=event.payload,
                )
        except Exception as exc:
            await abort(context, exc)
        finally:
            subscription.close()
