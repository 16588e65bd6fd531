"""``im.basic.Basic``: the original service's interface, served unchanged.

Backends built from the original's ``.proto`` work against it as they are. Where
the original's replies have no field for it, news travels in trailing metadata:
``im-missing-bin`` (one value per unreached user of SendMessageToMultiple, as many
as fit in ``MISSING_BUDGET`` bytes), ``im-missing-count`` and
``im-missing-truncated`` (all of them, and whether the list was cut), and
``im-queue-length`` (on RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from im_core.errors import InvalidArgument
from im_plugins.pb import basic_pb2 as pb
from im_plugins.pb import basic_pb2_grpc

from .errors import unary

if TYPE_CHECKING:
    from im_core.server import Server

MISSING_KEY = "im-missing-bin"
MISSING_COUNT_KEY = "im-missing-count"
MISSING_TRUNCATED_KEY = "im-missing-truncated"
#: Bytes of ``im-missing-bin`` entries in one reply, counted as HPACK does (name,
#: base64 value, 32 per entry): well under the 8 KiB of metadata a gRPC caller
#: accepts by default, past which it fails the call although the push was made.
MISSING_BUDGET = 4096
_EMPTY = pb.Empty()
_SENT = pb.SendMessageReply()


class BasicServicer(basic_pb2_grpc.BasicServicer):
    def __init__(self, server: Server) -> None:
        self.server = server

    async def Ping(self, request: pb.Empty, context: grpc.aio.ServicerContext) -> pb.Empty:
        return _EMPTY

    @unary
    async def Onliens(
        self, request: pb.Empty, context: grpc.aio.ServicerContext
    ) -> pb.OnlinesReply:
        return pb.OnlinesReply(number=await self.server.online_count())

    @unary
    async def SendMessage(
        self, request: pb.SendMessageReq, context: grpc.aio.ServicerContext
    ) -> pb.SendMessageReply:
        if not request.token:
            raise InvalidArgument("token: required")
        await self.server.push_one(request.token, request.data)
        return _SENT

    @unary
    async def SendMessageToMultiple(
        self, request: pb.SendMessageToMultipleReq, context: grpc.aio.ServicerContext
    ) -> pb.SendMessageReply:
        result = await self.server.push(request.token, request.data)
        if result.missing:
            context.set_trailing_metadata(missing_trailers(result.missing))
        return _SENT

    @unary
    async def Broadcast(
        self, request: pb.BroadcastReq, context: grpc.aio.ServicerContext
    ) -> pb.BroadcastReply:
        return pb.BroadcastReply(size=self.server.broadcast(request.data).queue_length)

    @unary
    async def WTIBroadcast(
        self, request: pb.BroadcastByWTIReq, context: grpc.aio.ServicerContext
    ) -> pb.BroadcastReply:
        return pb.BroadcastReply(size=self.server.push_by_tag(dict(request.data)))

    @unary
    async def WTIDistribute(
        self, request: pb.Empty, context: grpc.aio.ServicerContext
    ) -> pb.WTIDistributeReply:
        stats = await self.server.distribution()
        reply = pb.WTIDistributeReply()
        for tag, stat in stats.items():
            entry = reply.data[tag]
            entry.tag, entry.number, entry.createTime = tag, stat.number, int(stat.created)
        return reply


def missing_trailers(missing: Sequence[str]) -> tuple[tuple[str, str | bytes], ...]:
    """The first unreached users that fit in ``MISSING_BUDGET``, then the count of
    all of them and whether the list was cut (``im.v1.Im/PushUsers`` lists all)."""
    listed: list[tuple[str, str | bytes]] = []
    room = MISSING_BUDGET
    for user in missing:
        value = user.encode()
        cost = len(MISSING_KEY) + 4 * -(-len(value) // 3) + 32  # -bin values travel base64
        if cost > room:
            break
        room -= cost
        listed.append((MISSING_KEY, value))
    cut = "true" if len(listed) < len(missing) else "false"
    return (*listed, (MISSING_COUNT_KEY, str(len(missing))), (MISSING_TRUNCATED_KEY, cut))
