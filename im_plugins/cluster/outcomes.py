"""Ack outcomes carried to the node that allocated their sid, where ``im_ack_outcome``
fires: queued, sent in order by one task, one message per node for all outcomes
queued meanwhile. Best effort: an outcome that meets an outage is counted in
``lost`` and dropped (the outage itself is logged once)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from im_core.ack import AckOutcome
from im_core.errors import Unavailable

from . import wire

if TYPE_CHECKING:
    import asyncio

    from .base import ClusterBroker

log = logging.getLogger("im.cluster")


class OutcomeSender:
    def __init__(self, broker: ClusterBroker) -> None:
        self.broker = broker
        self.lost = 0
        self._queue: list[tuple[int, AckOutcome]] = []
        self._task: asyncio.Task[None] | None = None

    def report(self, node_id: int, outcome: AckOutcome) -> None:
        if not self.broker.health.up:
            self.lost += 1
            return
        self._queue.append((node_id, outcome))
        if self._task is None or self._task.done():
            self._task = self.broker.spawn(self._send())

    async def _send(self) -> None:
        broker = self.broker
        while self._queue:
            batch, self._queue = self._queue, []
            per_node: dict[int, list[AckOutcome]] = {}
            for node, outcome in batch:
                per_node.setdefault(node, []).append(outcome)
            for node, outcomes in per_node.items():
                data = wire.encode(wire.Outcomes(tuple(outcomes)), broker.node_id)
                try:
                    async with broker.health.guard("ack outcomes"):
                        await broker._notify(node, data)
                except Unavailable as exc:
                    self.lost += len(outcomes)
                    log.debug("%d ack outcomes not sent: %s", len(outcomes), exc)
