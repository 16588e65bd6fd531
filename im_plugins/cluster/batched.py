"""Coalescing calls to the broker: every call made while one batch is in flight goes
out with the next, in one round trip (a pipeline, or one message to a node), so a
stream of calls costs one broker round trip per batch, not per call. Batches leave
one after another, in the order of the calls."""

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
        size: Callable[[Q], int] | None = None,
        limit: int = 0,
        wait: float | None = None,
    ) -> None:
        self._run = run  # one answer per request, in order
        self._spawn = spawn
        # A batch holds requests up to ``limit`` in ``size`` (at least one): what the
        # transport can carry in one message.
        self._size = size
        self._limit = limit
        # How long a queued call waits for its answer (``TimeoutError``); a call sent
        # at once is bounded by ``run``.
        self._wait = wait
        self._queue: list[tuple[Q, asyncio.Future[A]]] = []
        self._busy = False  # a batch is in flight

    async def __call__(self, request: Q) -> A:
        if self._busy:  # this one goes with the next batch
            future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
            self._queue.append((request, future))
            if self._wait is None:
                return await future
            async with asyncio.timeout(self._wait):
                return await future
        # Nothing in flight: the caller sends its request itself. Calls that do not
        # overlap then cost no task and no hop between tasks.
        self._busy = True
        try:
            answers = await self._run([request])
        finally:
            if self._queue:  # queued meanwhile: they go next, in order
                self._spawn(self._drain())
            else:
                self._busy = False
        if len(answers) != 1:
            raise ValueError(f"{len(answers)} answers to 1 call")
        return answers[0]

    def _next(self) -> list[tuple[Q, asyncio.Future[A]]]:
        # A caller that gave up (its wait timed out, its task was cancelled) while
        # queued is not sent: it was told its call failed.
        queue = [item for item in self._queue if not item[1].done()]
        cut = len(queue)
        if self._size is not None:
            total = 0
            for i, (request, _) in enumerate(queue):
                total += self._size(request)
                if total > self._limit and i:
                    cut = i
                    break
        self._queue = queue[cut:]
        return queue[:cut]

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._next()
                if batch:
                    await self._send(batch)
        finally:
            self._busy = False
            for _, future in self._queue:  # left only when cancelled (shutdown)
                future.cancel()
            self._queue = []

    async def _send(self, batch: list[tuple[Q, asyncio.Future[A]]]) -> None:
        try:
            answers = await self._run([request for request, _ in batch])
            if len(answers) != len(batch):  # else a caller would wait forever
                raise ValueError(f"{len(answers)} answers to {len(batch)} calls")
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)
