"""Coalescing calls to the broker: every call made while one batch is in flight goes
out with the next, in one round trip (a pipeline), so a stream of acked pushes costs
one broker round trip per batch, not per push."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

Q = TypeVar("Q")
A = TypeVar("A")


class Batched(Generic[Q, A]):
    def __init__(
        self,
        run: Callable[[list[Q]], Awaitable[list[A]]],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self._run = run  # one answer per request, in order
        self._spawn = spawn
        self._queue: list[tuple[Q, asyncio.Future[A]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, request: Q) -> A:
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._task is None or self._task.done():
            self._task = self._spawn(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                answers = await self._run([request for request, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
