"""The broadcast queue: broadcasts and tag pushes wait here for a few workers that
hand them to the broker (the original's broadcast buffer and workers).

A caller is answered at once with the queue length; past 80 % of the capacity a
push is refused with ``Busy`` (429 / RESOURCE_EXHAUSTED) rather than queued behind
work the node cannot keep up with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .broker import Push
from .errors import Busy

log = logging.getLogger("im.server")


class BroadcastQueue:
    def __init__(
        self, capacity: int, workers: int, publish: Callable[[Push], Awaitable[Any]]
    ) -> None:
        self.capacity = capacity
        self._workers_wanted = workers
        self._publish = publish
        self._high_water = max(1, int(capacity * 0.8))
        self._queue: asyncio.Queue[Push] = asyncio.Queue(maxsize=capacity)
        self._workers: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(self._workers_wanted)]

    async def close(self) -> None:
        """Stop the workers (what is still queued is dropped: ``drain`` first)."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the queue to empty; return what is left."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            pass
        return self._queue.qsize()

    def room(self, n: int) -> None:
        """Raise ``Busy`` unless ``n`` more pushes fit under the high-water mark."""
        if len(self) + n > self._high_water:
            raise Busy(f"broadcast queue is busy ({len(self)}/{self.capacity})", len(self))

    def put(self, push: Push) -> int:
        """Queue ``push`` (call ``room`` first); return the queue length."""
        self._queue.put_nowait(push)
        return len(self)

    async def _work(self) -> None:
        queue = self._queue
        while True:
            push = await queue.get()
            try:
                await self._publish(push)
            except Exception:
                log.exception("broadcast failed: %s", push.kind)
            finally:
                queue.task_done()
