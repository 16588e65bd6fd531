"""``im.v1.Im``: the extended push API. The methods themselves are
``im_plugins.push_api.methods`` (the HTTP API serves the same ones); here each
request is checked against the proto's required marks and core errors become
statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.message import Message

from im_core.errors import ImError
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc
from im_plugins.push_api.methods import ImMethods, ack_event, stream_kind
from im_plugins.push_api.rules import check

from .errors import abort, unary

if TYPE_CHECKING:
    from im_core.server import Server

# An explicit alias: grpc is untyped, and a plain assignment of it is a variable.
Context: TypeAlias = grpc.aio.ServicerContext
SERVICE = pb.DESCRIPTOR.services_by_name["Im"]


class ImServicer(im_v1_pb2_grpc.ImServicer):
    """The streaming methods are written out; the unary ones are added below."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.methods = ImMethods(server)

    async def PushStream(
        self, batches: AsyncIterator[pb.PushBatch], context: Context
    ) -> AsyncIterator[pb.StreamResult]:
        push = self.methods.push
        seq = -1
        try:
            with self.server.metrics.stream("grpc") as count:
                async for batch in batches:
                    for request in batch.pushes:
                        seq += 1
                        try:
                            try:
                                check(request)
                            except ImError as exc:
                                count(stream_kind(request), exc.code)
                                raise
                            r = await push(request, count)
                        except ImError as exc:
                            error = pb.Error(code=exc.code, message=str(exc))
                            yield pb.StreamResult(seq=seq, error=error)
                            continue
                        if r.sid or r.missing:  # no news, no reply: the fast path writes nothing
                            yield pb.StreamResult(
                                seq=seq, sid=r.sid, missing=r.missing, stored=r.stored
                            )
        except Exception as exc:
            await abort(context, exc)

    async def AckEvents(
        self, request: pb.AckEventsRequest, context: Context
    ) -> AsyncIterator[pb.AckEvent]:
        subscription = self.server.outcomes.subscribe()
        try:
            await context.send_initial_metadata(())  # tells the caller it is subscribed
            async for outcome in subscription:
                yield ack_event(outcome)
        except Exception as exc:
            await abort(context, exc)
        finally:
            subscription.close()


def _serve(name: str) -> Callable[[ImServicer, Message, Context], Awaitable[Message]]:
    async def call(self: ImServicer, request: Any, context: Context) -> Message:
        check(request)
        method: Callable[[Any], Awaitable[Message]] = getattr(self.methods, name)
        return await method(request)

    call.__name__ = call.__qualname__ = name
    return unary(call)


for _method in SERVICE.methods:
    if not (_method.client_streaming or _method.server_streaming):
        setattr(ImServicer, _method.name, _serve(_method.name))
