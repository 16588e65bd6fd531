"""What a plugin may use of the server: the ``server`` every hook receives.

A narrow, documented surface (docs/hooks.md, "The server a plugin sees"); the
rest of ``Server`` is the core's own and may change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .broker import Broker, NodeStat, Presence
    from .bucket import Buckets
    from .calls import Calls
    from .connections import Connections
    from .local_node import Node
    from .metrics import Metrics
    from .options import Options
    from .outcomes import OutcomeFeed
    from .server import PushResult, Queued, Stats
    from .tags import TagStat
    from .transport import Transport


class ServerAPI(Protocol):
    # --- settings and state
    options: Options
    node_id: int
    loop: asyncio.AbstractEventLoop
    broker: Broker | None
    transports: list[Transport]
    started: bool
    draining: bool  # shutting down: not ready, new connections refused
    stopping: bool
    # --- API calls in flight and the access log (API plugins wrap each unary call)
    calls: Calls

    # --- for client transports: admission, registration, inbound messages
    connections: Connections
    # --- this node's connections (read-only use: ``get(user_id)``, ``len``)
    buckets: Buckets
    # --- the node as the broker sees it (``local_count()``, ``local_presence()``)
    local: Node
    # --- ack outcomes of pushes made through this node (the APIs' event streams)
    outcomes: OutcomeFeed
    # --- what the node counted (read at scrape time by a metrics plugin)
    metrics: Metrics

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; its failure is logged; awaited at stop."""
        ...

    # --- the push API (docs/api.md mirrors it)
    async def push(
        self,
        users: str | Sequence[str],
        payload: bytes,
        *,
        ack: bool = False,
        store: bool | None = None,
    ) -> PushResult: ...

    async def push_one(
        self, user: str, payload: bytes, *, ack: bool = False, store: bool | None = None
    ) -> int: ...

    def broadcast(self, payload: bytes, *, ack: bool = False) -> Queued: ...

    def push_tags(
        self,
        tags: Iterable[str],
        payload: bytes,
        *,
        match: str = "any",
        ack: bool = False,
        store: bool | None = None,
    ) -> Queued: ...

    def push_by_tag(self, contents: Mapping[str, bytes]) -> int: ...

    @property
    def queue_length(self) -> int: ...

    # --- cluster-wide queries and control
    async def online_count(self) -> int: ...

    async def presence(self, user_id: str) -> Presence | None: ...

    async def devices(self, user_id: str) -> list[Presence]: ...

    async def distribution(self) -> dict[str, TagStat]: ...

    async def nodes(self) -> list[NodeStat]: ...

    async def kick(self, user_id: str, reason: str = "kicked") -> bool: ...

    async def retag(
        self, user_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> bool: ...

    async def stats(self) -> Stats: ...

    def ready(self) -> bool:
        """Started, broker reachable, not draining (``/ready``)."""
        ...
