"""gRPC calls in ``server.calls``: the access log (``--access-log``) and DEBUG
lines for unary calls. Streams are not logged per message."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from im_core.calls import Calls


class CallsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        calls, behaviour = self._calls, handler.unary_unary
        method = details.method.rsplit("/", 1)[-1]

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with calls.track("grpc", method, context.peer()) as tracked:
                try:
                    return await behaviour(request, context)
                finally:
                    code = context.code()
                    tracked.status = getattr(code, "name", "OK") if code is not None else "OK"

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
