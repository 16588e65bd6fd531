"""What a node does with a message from another node: one handler per kind.

A broker's transport hands every message it receives from a peer to ``Peer.read``
(which refuses what this node cannot read, see ``wire``) and each request or notice
to ``Peer.answer``; it sends the returned reply back to the asking node.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from im_core.errors import CloseCode, InvalidArgument
from im_core.ratelog import RateLimitedLog

from . import wire

if TYPE_CHECKING:
    from .base import ClusterBroker

log = logging.getLogger("im.cluster")

Handler = Callable[[int, Any], Awaitable[wire.Reply | None]]
#: message ids of broadcasts and tag pushes remembered per receiver: a copy sent again
#: after a broker failure, or the same push on another tag's subject, is dropped
SEEN = 16384


class Peer:
    """Answers this node gives other nodes of the cluster."""

    def __init__(self, broker: ClusterBroker) -> None:
        self.broker = broker
        # A peer of another version sends many messages: one line per sender and cause.
        self._refusals = RateLimitedLog(log)
        self._seen: set[tuple[int, int]] = set()
        self._seen_order: deque[tuple[int, int]] = deque()
        self._handlers: dict[str, Handler] = {
            wire.Deliver.kind: self._deliver,
            wire.Broadcasts.kind: self._broadcasts,
            wire.Pushes.kind: self._pushes,
            wire.Outcomes.kind: self._outcomes,
            wire.Take.kind: self._take,
            wire.Kick.kind: self._kick,
            wire.Retag.kind: self._retag,
        }

    def read(self, data: bytes) -> tuple[int, int, wire.Message] | None:
        """(origin, ref, message) of ``data``; None, logged, when this node cannot read it."""
        try:
            return wire.decode(data)
        except wire.Refused as exc:
            self._refusals.warning(exc.cause, "%s broker: %s", self.broker.name, exc)
            return None

    async def answer(
        self, origin: int, message: wire.Message, ref: int = 0
    ) -> wire.Reply | None:
        """Run a request or notice from node ``origin``; the reply, for a request.
        ``ref`` of a ``push`` is its message id: a second copy is dropped."""
        if (
            ref
            and message.kind == wire.Deliver.kind
            and origin != self.broker.node_id  # our own echo: dropped by ``_deliver``
            and not self._first(origin, ref)
        ):
            return None
        handler = self._handlers.get(message.kind)
        if handler is None:  # a reply nobody waits for any more, or one sent to the wrong place
            self._refusals.warning(
                f"unexpected {message.kind}:{origin}",
                "%s broker: ignored an unexpected %r from node %s",
                self.broker.name,
                message.kind,
                origin,
            )
            return None
        return await handler(origin, message)

    async def _deliver(self, origin: int, message: wire.Deliver) -> None:
        if origin != self.broker.node_id:  # our own broadcast was delivered already
            self.broker.node.deliver(message.push())

    async def _broadcasts(self, origin: int, message: wire.Broadcasts) -> None:
        if origin != self.broker.node_id:
            deliver, first = self.broker.node.deliver, self._first
            for mid, push in message.pushes():
                if first(origin, mid):
                    deliver(push)

    def _first(self, origin: int, mid: int) -> bool:
        """Whether message ``mid`` of node ``origin`` is new here (and remember it)."""
        key = (origin, mid)
        if key in self._seen:
            return False
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > SEEN:
            self._seen.discard(self._seen_order.popleft())
        return True

    async def _pushes(self, origin: int, message: wire.Pushes) -> wire.NotReached:
        deliver = self.broker.node.deliver  # in order: a user's pushes stay in order
        return wire.NotReached(tuple(tuple(deliver(p.push())) for p in message.pushes))

    async def _outcomes(self, origin: int, message: wire.Outcomes) -> None:
        for outcome in message.outcomes:
            self.broker.node.ack_outcome(outcome)

    async def _take(self, origin: int, message: wire.Take) -> wire.Taken:
        node, user = self.broker.node, message.user
        if self.broker.per_user == 1:  # the user's one login is there now
            self.broker.routes.learn(user, origin)
        for conn_id in message.replaced:  # close older logins first: then the entries are free
            node.kick_local(user, CloseCode.REPLACED, "replaced by a new login", conn_id)
        entries = node.take_unacked(user, message.device)
        if entries:
            log.debug("handing %d unacked of %r to node %d", len(entries), user, origin)
        return wire.Taken(tuple(wire.Entry(e.sid, e.tries, e.payload) for e in entries))

    async def _kick(self, origin: int, message: wire.Kick) -> wire.Done:
        ok = self.broker.node.kick_local(
            message.user, message.code, message.reason, message.conn_id
        )
        return wire.Done(ok)

    async def _retag(self, origin: int, message: wire.Retag) -> wire.Done:
        try:
            ok = self.broker.node.retag_local(message.user, message.add, message.remove)
        except InvalidArgument as exc:
            return wire.Done(False, str(exc))
        if ok:
            await self.broker.retagged(message.user)
        return wire.Done(ok)
