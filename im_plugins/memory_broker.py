"""The in-memory broker: one node is the whole cluster (the default, ``--broker memory``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from im_core import hookimpl
from im_core.broker import Broker, LocalNode, Presence, Push
from im_core.tags import TagStat

if TYPE_CHECKING:
    from im_core.server import Server


class MemoryBroker(Broker):
    name = "memory"
    node_id = 0  # also for subclasses that do not call __init__

    def __init__(self, node_id: int = 0) -> None:
        self.node_id = node_id

    async def start(self, node: LocalNode) -> int:
        self.node = node
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

    async def connected(self, presence: Presence) -> None:
        pass  # the node's own registry already replaced any older login

    async def disconnected(self, presence: Presence) -> None:
        pass

    async def online_count(self) -> int:
        return self.node.local_count()

    async def presence(self, user_id: str) -> Presence | None:
        return self.node.local_presence(user_id)

    async def distribution(self) -> dict[str, TagStat]:
        return self.node.local_distribution()

    async def kick(self, user_id: str, code: int, reason: str) -> bool:
        return self.node.kick_local(user_id, code, reason, None)

    async def retag(self, user_id: str, add: tuple[str, ...], remove: tuple[str, ...]) -> bool:
        return self.node.retag_local(user_id, add, remove)


@hookimpl
def im_broker(server: Server) -> Broker | None:
    if server.options.broker != "memory":
        return None
    return MemoryBroker(server.options.node_id or 0)
