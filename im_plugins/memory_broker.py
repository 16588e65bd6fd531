"""The in-memory broker: one node is the whole cluster (the default, ``--broker memory``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from im_core import hookimpl
from im_core.broker import (
    Broker,
    Kept,
    LocalNode,
    NodeStat,
    Presence,
    Push,
    TagKept,
    missed_pushes,
)
from im_core.tags import TagStat

if TYPE_CHECKING:
    from im_core.server import Server


class MemoryBroker(Broker):
    name = "memory"
    # Class defaults also serve subclasses that do not call __init__.
    node_id = 0
    inbox_ttl = 86400.0
    per_tag = 100

    def __init__(self, node_id: int = 0, inbox_ttl: float = 86400.0, per_tag: int = 100) -> None:
        self.node_id = node_id
        self.inbox_ttl = inbox_ttl
        self.per_tag = per_tag

    async def start(self, node: LocalNode) -> int:
        self.node = node
        self._tagbox: dict[str, deque[TagKept]] = {}
        # user -> when they last left, in the order they left: the oldest go first.
        self._seen: dict[str, float] = {}
        return self.node_id

    async def stop(self) -> None:
        pass

    async def publish(self, push: Push) -> list[str]:
        return self.node.deliver(push)

    async def keep(
        self, push: Push, users: Sequence[str], ttl: float, bounded: bool
    ) -> list[str]:
        # The node's own ack tracker is the inbox: one process, nothing to share.
        keep = self.node.keep
        return [u for u in users if keep(u, push.sid, push.payload, ttl)]

    async def keep_for_tags(self, push: Push, ttl: float) -> None:
        now = time.time()
        kept = TagKept.of(push, now, ttl)
        for tag in push.tags:
            box = self._tagbox.get(tag)
            if box is None:
                box = self._tagbox[tag] = deque(maxlen=self.per_tag)
            while box and box[0].expires <= now:
                box.popleft()
            box.append(kept)

    async def owed(self, user_id: str, tags: tuple[str, ...]) -> list[Kept]:
        # Kept user pushes are parked in the node's own ack tracker: only tag pushes here.
        since = self._seen.get(user_id)
        if since is None or not self._tagbox:
            return []
        now = time.time()
        boxes = [self._tagbox.get(t, ()) for t in tags]
        return missed_pushes(since, tags, (c for box in boxes for c in box), now)

    async def connected(self, presence: Presence) -> None:
        pass  # the node's own registry already replaced any older login

    async def disconnected(self, presence: Presence) -> None:
        seen, now = self._seen, time.time()
        seen.pop(presence.user_id, None)
        seen[presence.user_id] = now
        horizon = now - self.inbox_ttl
        for _ in range(2):  # one added, up to two who left before the ttl dropped
            first = next(iter(seen))
            if seen[first] > horizon:
                break
            del seen[first]

    async def online_count(self) -> int:
        return self.node.local_count()

    async def presence(self, user_id: str) -> Presence | None:
        return self.node.local_presence(user_id)

    async def devices(self, user_id: str) -> list[Presence]:
        if await self.presence(user_id) is None:  # a subclass's presence rules apply
            return []
        return self.node.local_devices(user_id)

    async def connection_count(self) -> int:
        return self.node.local_connections()

    async def distribution(self) -> dict[str, TagStat]:
        return self.node.local_distribution()

    async def nodes(self) -> list[NodeStat]:
        node = self.node
        return [NodeStat(self.node_id, node.local_count(), node.local_connections())]

    async def kick(self, user_id: str, code: int, reason: str) -> bool:
        return self.node.kick_local(user_id, code, reason, None)

    async def retag(self, user_id: str, add: tuple[str, ...], remove: tuple[str, ...]) -> bool:
        return self.node.retag_local(user_id, add, remove)


@hookimpl
def im_broker(server: Server) -> Broker | None:
    if server.options.broker != "memory":
        return None
    opts = server.options
    return MemoryBroker(opts.node_id or 0, opts.inbox_ttl, opts.inbox_max_messages)
