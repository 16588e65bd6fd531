"""The im node: lifecycle (start, drain, stop) and the public push API.

Data flow: a push API call -> ``Server.push*`` -> broker -> every node holding a
target -> ``server.local.deliver`` -> local lookup -> encode once per ``Format`` ->
non-blocking ``Connection.send`` -> the outbox writes each socket once per loop
iteration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from .ack import AckOutcome, AckTracker, SidAllocator, Unacked, node_of
from .broadcast import BroadcastQueue
from .broker import Broker, Kind, NodeStat, Presence, Push
from .bucket import Buckets
from .calls import Calls
from .codec import Codec
from .connection import Outbox
from .connections import Connections
from .errors import (
    CloseCode,
    ConfigError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from .events import events
from .local_node import Node
from .metrics import Metrics, counted
from .options import Options, flag
from .outcomes import OutcomeFeed
from .plugins import Hooks, get_plugin_manager
from .tags import TagIndex, TagStat
from .transport import Transport

log = logging.getLogger("im.server")


__all__ = ["ConfigError", "PushResult", "Queued", "Server", "Stats"]


@attrs.frozen
class PushResult:
    """Outcome of a push to users: its sid (0 without ack or store), who was not
    reached, and who was offline and had it kept (``store``)."""

    sid: int
    missing: tuple[str, ...] = ()
    stored: tuple[str, ...] = ()


@attrs.frozen
class Queued:
    """A broadcast or tag push accepted into the broadcast queue."""

    sid: int
    queue_length: int


@attrs.frozen
class Stats:
    """A snapshot for operators: the cluster-wide online count and this node's numbers."""

    node_id: int
    online: int
    connections: int
    queue_length: int
    queue_capacity: int
    unacked: int
    tag_groups: int
    online_connections: int


class Server:
    def __init__(self, options: Options | None = None, pm: pluggy.PluginManager | None = None):
        self.options = options or Options()
        self.pm = pm if pm is not None else get_plugin_manager(self.options.plugins)
        self.hooks = Hooks(self.pm)
        self.node_id: int = self.options.node_id or 0
        self.codecs: dict[str, Codec] = {}
        self.buckets = Buckets(self.options.bucket_number)
        self.tags = TagIndex()
        self.outcomes = OutcomeFeed()
        self.metrics = Metrics()
        self.broker: Broker | None = None
        self.transports: list[Transport] = []
        self.started = False
        self.draining = False  # shutting down: /ready says 503, new connections are refused
        self.stopping = False
        self.calls = Calls(self.options.access_log)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: list[Any] = []
        self._stack = AsyncExitStack()
        self.connections = Connections(self)
        self.local = Node(self)
        opts = self.options
        self.queue = BroadcastQueue(opts.broadcast_buffer, opts.broadcast_workers, self._publish)

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Resolve plugins, connect the broker, start timers, workers and transports.

        Each step registers its undo as it succeeds; if a later step fails, what
        started is undone in reverse order and the exception propagates, so a node
        that failed to start holds no port, task, timer or broker connection.
        """
        stack = AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            self.stopping = True
            try:
                await stack.aclose()
            finally:
                self.stopping = False
            raise
        self._stack = stack
        self.started = True

    async def _start(self, stack: AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.outbox = Outbox(
            loop,
            delay=self.options.write_delay / 1000,
            slice_size=self.options.fanout_slice,
            budget=self.options.fanout_budget / 1e6,
            everyone=self.buckets.__iter__,
        )
        self.metrics.attach(self.outbox)
        self._check_options()
        self.codecs = self.hooks.codecs()
        if self.options.codec not in self.codecs:  # the default must be one a plugin made
            known = sorted(self.codecs)
            raise ConfigError(f"--codec: unknown codec {self.options.codec!r} (known: {known})")
        broker = self.hooks.broker(self)
        if broker is None:
            raise ConfigError(f"broker: no plugin provides a broker named {self.options.broker!r}")
        self.broker = broker
        stack.push_async_callback(broker.stop)
        self.node_id = await broker.start(self.local)
        stack.push_async_callback(self._wait_tasks)  # they may still need the broker
        self.sids = SidAllocator(self.node_id)
        opts = self.options
        self.acks = AckTracker(
            interval=opts.ack_interval,
            max_tries=opts.ack_max_tries,
            keep_offline=opts.ack_keep_offline,
            clock=loop.time,
            resend=self._resend,
            on_acked=self._acked,
            on_expired=self.ack_expired,
        )
        stack.callback(self._cancel_timers)
        self._timers = self.buckets.schedule_sweeps(
            loop, opts.sweep_interval, opts.heartbeat_interval, loop.time
        )
        self._every(min(1.0, opts.ack_interval / 4), self.acks.tick)
        self._every(
            opts.tag_cleanup_interval, lambda: self.tags.cleanup(time.time(), opts.tag_empty_ttl)
        )
        stack.push_async_callback(self.queue.close)
        self.queue.start()
        self.transports = self.hooks.transports(self)
        # Plugins start before anything listens (aiohttp's on_startup): one that
        # refuses (ConfigError) or fails stops the node before a client can connect.
        stack.push_async_callback(self.hooks.shutdown, self)
        await self.hooks.startup(self)
        for transport in self.transports:
            stack.push_async_callback(transport.close)  # also undoes a partial start
            await transport.start(self)

    def ready(self) -> bool:
        """Whether this node should get traffic: started (its transports listen),
        its broker reachable, not draining (``/ready``)."""
        broker = self.broker
        return self.started and not self.draining and broker is not None and broker.healthy()

    async def stop(self) -> None:
        """Graceful shutdown (docs/operations.md, "Graceful drain"): not ready from
        now on (``/ready`` 503, new connections refused), ``--drain-delay`` for load
        balancers to notice, up to ``--drain-timeout`` for API calls in flight; then
        stop accepting, drain queued pushes, close every connection with 1001, and
        undo the start in reverse: transports, shutdown hooks, workers, timers,
        background tasks, the broker."""
        if not self.started or self.draining:
            return
        self.draining = True
        opts = self.options
        if opts.drain_delay:
            log.info("draining: not ready; serving %.1f s more", opts.drain_delay)
            await asyncio.sleep(opts.drain_delay)
        left = await self.calls.idle(opts.drain_timeout)
        if left:
            log.warning("shutdown: %d API calls still in flight after the drain", left)
        self.stopping = True
        for transport in reversed(self.transports):
            await transport.stop_accepting()
        left = await self.queue.drain(self.options.drain_timeout)
        if left:
            log.warning("shutdown: %d queued pushes not delivered", left)
        for conn in list(self.buckets):
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        self.outcomes.close()  # ends the APIs' ack event streams
        try:
            await self._stack.aclose()
        finally:
            self.started = False

    async def _publish(self, push: Push) -> list[str]:
        assert self.broker is not None
        if push.store:  # kept first: a member who connects meanwhile gets it either way
            await self.broker.keep_for_tags(push, self.options.inbox_ttl)
        return await self.broker.publish(push)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _check_options(self) -> None:
        """Every plugin setting is one a plugin declared, with a valid value."""
        classes = self.hooks.option_classes()
        known = {f.name for cls in classes for f in attrs.fields(cls)}
        unknown = sorted(set(self.options.plugin) - known)
        if unknown:
            raise ConfigError(f"{flag(unknown[0])}: no plugin declares this option")
        for cls in classes:
            try:
                self.options.of(cls)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def _cancel_timers(self) -> None:
        for handle in self._timers:
            handle.cancel()

    async def _wait_tasks(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.options.drain_timeout)

    def _every(self, period: float, fn: Any) -> None:
        index = len(self._timers)

        def tick() -> None:
            try:
                fn()
            except Exception:
                log.exception("periodic task failed")
            self._timers[index] = self.loop.call_later(period, tick)

        self._timers.append(self.loop.call_later(period, tick))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; its failure is logged, never lost."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # --- acks ------------------------------------------------------------------------

    def _resend(self, entry: Unacked) -> bool:
        conn = self.buckets.device(entry.user_id, entry.device)
        if conn is None or not conn.resend(entry):
            return False
        entry.queued = conn.holding
        return True

    def _forget(self, entry: Unacked) -> None:
        """Drop the broker's copy of an entry that ended, unless another device of
        the user still tracks it here (the copy is per user)."""
        if self.broker is None:
            return
        if self.options.max_connections_per_user > 1 and self.acks.shared(entry.user_id, entry.sid):
            return
        self.broker.forget(entry.user_id, entry.sid)

    def _acked(self, entry: Unacked) -> None:
        self._forget(entry)
        self.spawn(self.hooks.acked(self, entry.user_id, entry.sid, entry.device))
        self._report(
            AckOutcome("acked", entry.user_id, entry.sid, entry.tries, device=entry.device)
        )

    def ack_expired(self, entry: Unacked, reason: str) -> None:
        """An unacked entry ran out: fire ``im_ack_expired`` and report the outcome."""
        self._forget(entry)
        self.spawn(
            self.hooks.ack_expired(
                self, entry.user_id, entry.sid, entry.payload, entry.tries, reason, entry.device
            )
        )
        outcome = AckOutcome(
            "expired", entry.user_id, entry.sid, entry.tries, reason, entry.payload, entry.device
        )
        self._report(outcome)

    def _report(self, outcome: AckOutcome) -> None:
        """Send the outcome to the node that allocated the sid (this one, usually)."""
        origin = node_of(outcome.sid)
        if origin == self.node_id or self.broker is None or not self.broker.report(origin, outcome):
            self.local.ack_outcome(outcome)

    # --- the push API ------------------------------------------------------------------

    def _check(self, payload: bytes) -> None:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise InvalidArgument("payload: must be bytes")
        if len(payload) > self.options.max_message_size:
            raise PayloadTooLarge(
                f"payload: {len(payload)} bytes is over max_message_size "
                f"({self.options.max_message_size})"
            )

    async def push(
        self,
        users: str | Sequence[str],
        payload: bytes,
        *,
        ack: bool = False,
        store: bool | None = None,
    ) -> PushResult:
        """Push to one or more users; ``missing`` lists those not reached, ``stored``
        those offline for whom it was kept (``store``; ``None``: ``--store``)."""
        if not counted():  # not through a push API: counted here, then pushed as it is
            kind = "user" if isinstance(users, str) else "users"
            with self.metrics.push_call("embedded", "push", kind):
                return await self.push(users, payload, ack=ack, store=store)
        self._check(payload)
        if isinstance(users, str):
            users = (users,)
        users = tuple(dict.fromkeys(u for u in users if u))
        if not users:
            raise InvalidArgument("users: at least one user id is required")
        if store is None:
            store = self.options.store
        # A kept message leaves the inbox when it is acked: it has a sid.
        sid = self.sids.next() if ack or store else 0
        broker = self.broker
        assert broker is not None
        push = Push("users", bytes(payload), users=users, sid=sid)
        if not sid:
            return PushResult(0, tuple(await broker.publish(push)))
        opts = self.options
        ttl = opts.inbox_ttl if store else opts.unacked_ttl()
        if not broker.durable:
            missing = await broker.publish(push)
            stored = await broker.keep(push, missing, ttl, True) if store and missing else []
        else:
            # Kept before it is delivered: from the answer on, the death of the node
            # that delivers it loses nothing (docs/cluster.md, "Durable acks"). The
            # broker holds one copy per user: past --inbox-max-push-bytes of copies
            # the push is not kept (acks as on one node; offline users are missing).
            kept: set[str] = set()
            if len(users) * len(push.payload) <= opts.inbox_max_push_bytes:
                try:
                    kept = set(await broker.keep(push, users, ttl, store))
                except Unavailable:
                    pass  # delivered as on one node; the outage is logged once

            missing = await broker.publish(push)
            stored = [u for u in missing if u in kept] if store else []
            for user in missing:
                if user in kept and not store:
                    broker.forget(user, sid)
        if stored:
            kept_for = set(stored)
            missing = [u for u in missing if u not in kept_for]
        return PushResult(sid, tuple(missing), tuple(stored))

    async def push_one(
        self, user: str, payload: bytes, *, ack: bool = False, store: bool | None = None
    ) -> int:
        """Push to one user; raise ``NotFound`` when they are not online and it was
        not kept for them. Returns the sid."""
        with self.metrics.embedded("push_one", "user"):
            result = await self.push(user, payload, ack=ack, store=store)
            if result.missing:
                raise NotFound(f"user {user!r} is not online")
        return result.sid

    def broadcast(self, payload: bytes, *, ack: bool = False) -> Queued:
        """Queue a push to every connected user."""
        with self.metrics.embedded("broadcast", "broadcast"):
            return self._queue_push("all", payload, (), ack)

    def push_tags(
        self,
        tags: Iterable[str],
        payload: bytes,
        *,
        match: str = "any",
        ack: bool = False,
        store: bool | None = None,
    ) -> Queued:
        """Queue a push to users with any (``match="any"``) or all of ``tags``;
        ``store`` also keeps it for members who are away (``Broker.missed``;
        ``None``: ``--store``)."""
        with self.metrics.embedded("push_tags", "tags"):
            if match not in ("any", "all"):
                raise InvalidArgument("match: must be 'any' or 'all'")
            tags = tuple(dict.fromkeys(t for t in tags if t))
            if not tags:
                raise InvalidArgument("tags: at least one tag is required")
            if store is None:
                store = self.options.store
            kind: Kind = "tags_any" if match == "any" else "tags_all"
            return self._queue_push(kind, payload, tags, ack, store)

    def push_by_tag(self, contents: Mapping[str, bytes]) -> int:
        """Each tag gets its own payload (the original's WTIBroadcast). Returns the
        queue length; all or none are queued."""
        with self.metrics.embedded("push_by_tag", "tags"):
            if not contents:
                raise InvalidArgument("data: at least one tag is required")
            for payload in contents.values():
                self._check(payload)
            self.queue.room(len(contents))
            for tag, payload in contents.items():
                self._queue_push("tags_any", payload, (tag,), False)
            return self.queue_length

    @property
    def queue_length(self) -> int:
        return len(self.queue)

    def _queue_push(
        self, kind: Kind, payload: bytes, tags: tuple[str, ...], ack: bool, store: bool = False
    ) -> Queued:
        self._check(payload)
        self.queue.room(1)
        sid = self.sids.next() if ack or store else 0
        length = self.queue.put(Push(kind, bytes(payload), tags=tags, sid=sid, store=store))
        return Queued(sid, length)

    # --- queries and control ---------------------------------------------------------

    async def online_count(self) -> int:
        assert self.broker is not None
        return await self.broker.online_count()

    async def presence(self, user_id: str) -> Presence | None:
        """The user's newest connection in the cluster, if any."""
        assert self.broker is not None
        return await self.broker.presence(user_id)

    async def devices(self, user_id: str) -> list[Presence]:
        """Every connection of the user in the cluster, oldest first."""
        assert self.broker is not None
        return await self.broker.devices(user_id)

    async def distribution(self) -> dict[str, TagStat]:
        assert self.broker is not None
        return await self.broker.distribution()

    async def nodes(self) -> list[NodeStat]:
        """The cluster's live nodes, by node id."""
        assert self.broker is not None
        return sorted(await self.broker.nodes(), key=lambda n: n.node_id)

    async def kick(self, user_id: str, reason: str = "kicked") -> bool:
        assert self.broker is not None
        found = await self.broker.kick(user_id, int(CloseCode.KICKED), reason)
        events.info(
            "kick", "kicked %s (%s): %s", user_id, reason, "closed" if found else "not online",
            extra={"im": {"event": "kick", "user": user_id, "reason": reason, "found": found}},
        )  # fmt: skip
        return found

    async def retag(
        self, user_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> bool:
        add, remove = tuple(dict.fromkeys(add)), tuple(dict.fromkeys(remove))
        if len(add) > self.options.max_tags:
            raise InvalidArgument(f"add: more than {self.options.max_tags} tags (max_tags)")
        assert self.broker is not None
        return await self.broker.retag(user_id, add, remove)

    # --- stats -------------------------------------------------------------------------

    async def stats(self) -> Stats:
        assert self.broker is not None
        return Stats(
            node_id=self.node_id,
            online=await self.online_count(),
            connections=self.buckets.connections,
            queue_length=self.queue_length,
            queue_capacity=self.options.broadcast_buffer,
            unacked=len(self.acks),
            tag_groups=len(self.tags.groups),
            online_connections=await self.broker.connection_count(),
        )


if TYPE_CHECKING:  # the server offers plugins what ServerAPI promises (checked by mypy)
    from .server_api import ServerAPI

    _offers: type[ServerAPI] = Server
