"""Core errors -> gRPC status codes, and the decorator that applies the mapping.

The HTTP API maps the same ``ImError`` classes to HTTP statuses, so both APIs
always tell a caller the same thing (docs/api.md, "Errors").
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from im_core.errors import Busy, ImError, InvalidArgument
from im_plugins.push_api.methods import PUSH_KINDS

from .checked import Malformed

log = logging.getLogger("im.grpc")

STATUS: dict[str, grpc.StatusCode] = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "payload_too_large": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
}

#: Trailing metadata key carrying the broadcast queue length on RESOURCE_EXHAUSTED.
QUEUE_LENGTH_KEY = "im-queue-length"

M = TypeVar("M", bound=Callable[..., Awaitable[Any]])
NOT_COUNTED = contextlib.nullcontext()


async def abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    """End the call with the status ``exc`` stands for (never a traceback)."""
    if not isinstance(exc, ImError):
        log.error("unexpected error in a gRPC call", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    else:
        metadata: tuple[tuple[str, str], ...] = ()
        if isinstance(exc, Busy):
            metadata = ((QUEUE_LENGTH_KEY, str(exc.queue_length)),)
        await context.abort(
            STATUS.get(exc.code, grpc.StatusCode.INTERNAL), str(exc), trailing_metadata=metadata
        )
    # abort() always raises; grpc is untyped, so say so for the type checker.
    raise AssertionError("ServicerContext.abort returned")


def unary(method: M) -> M:
    """Wrap a unary servicer method: core errors become statuses, and a request
    that did not decode (``checked.Malformed``) is INVALID_ARGUMENT. A push method
    (``PUSH_KINDS``) is counted with its outcome (``server.metrics``)."""
    name = method.__name__
    kind = PUSH_KINDS.get(name)

    @functools.wraps(method)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            with (
                self.server.metrics.push_call("grpc", name, kind) if kind else NOT_COUNTED
            ):
                if request.__class__ is Malformed:
                    raise InvalidArgument(request.message)
                return await method(self, request, context)
        except Exception as exc:
            await abort(context, exc)

    call.checks_malformed = True  # type: ignore[attr-defined]  # checked.register: no wrapper
    return call  # type: ignore[return-value]
