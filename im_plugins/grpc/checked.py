"""Requests that do not decode get INVALID_ARGUMENT naming the message type, not
UNKNOWN with Python internals, at no interceptor cost on well-formed calls.

``register`` hands a generated ``add_*Servicer_to_server`` function a stand-in
server that swaps each method's request deserializer for one that catches
``DecodeError``: unary methods then receive a ``Malformed`` request, which
``errors.unary`` (or a thin wrapper for undecorated methods) refuses; for request
streams the iterator raises ``InvalidArgument``, which the servicer turns into
the status like any other core error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from im_core.errors import InvalidArgument

Behaviour = Callable[..., Any]


class Malformed:
    """The request of a unary call whose bytes are not a valid message."""

    __slots__ = ("message",)

    def __init__(self, type_name: str) -> None:
        self.message = f"request: not a valid {type_name} message"


def _decoder(message_type: type[Message], streaming: bool) -> Callable[[bytes], Any]:
    parse = message_type.FromString
    malformed = Malformed(message_type.DESCRIPTOR.full_name)

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError:
            if streaming:
                raise InvalidArgument(malformed.message) from None
            return malformed

    return deserialize


def _checked_unary(behaviour: Behaviour) -> Behaviour:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.__class__ is Malformed:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behaviour(request, context)

    return call


def _checked_unary_stream(behaviour: Behaviour) -> Behaviour:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if request.__class__ is Malformed:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async with contextlib.aclosing(behaviour(request, context)) as responses:
            async for response in responses:
                yield response

    return call


def checked(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that does not raise ``DecodeError``."""
    message_type = getattr(handler.request_deserializer, "__self__", None)
    if not (isinstance(message_type, type) and issubclass(message_type, Message)):
        return handler  # not a generated protobuf handler: left as it is
    deserializer = _decoder(message_type, handler.request_streaming)
    if handler.request_streaming:
        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.stream_unary_rpc_method_handler
        )
        behaviour = handler.stream_stream or handler.stream_unary
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
        behaviour = _checked_unary_stream(handler.unary_stream)
    else:
        make = grpc.unary_unary_rpc_method_handler
        behaviour = handler.unary_unary
        if not getattr(behaviour, "checks_malformed", False):
            behaviour = _checked_unary(behaviour)
    return make(
        behaviour,
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )


class _Registrar:
    """Stands in for the server in a generated ``add_*Servicer_to_server``."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self._generic: Sequence[grpc.GenericRpcHandler] = ()
        self.registered = False

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic = handlers  # built from the same handlers as the registered ones

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        handlers = {name: checked(handler) for name, handler in handlers.items()}
        generic = grpc.method_handlers_generic_handler(service, handlers)
        self._server.add_generic_rpc_handlers((generic,))
        self._server.add_registered_method_handlers(service, handlers)
        self.registered = True

    def finish(self) -> None:
        if not self.registered:  # generated code of an older grpcio-tools
            self._server.add_generic_rpc_handlers(self._generic)


def register(add: Callable[[Any, Any], None], servicer: object, server: grpc.aio.Server) -> None:
    """``add(servicer, server)`` with every request deserializer checked."""
    registrar = _Registrar(server)
    add(servicer, registrar)
    registrar.finish()
