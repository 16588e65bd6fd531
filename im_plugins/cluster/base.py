"""What every cluster broker shares: routing a push to the nodes that hold its
targets, handing unacked entries over, and keeping this node's state in the
cluster (the recovery loop).

A concrete broker (``redis``, ``nats``) supplies the transport (one node, every
node, the nodes of some tags, request/reply) and the cluster-wide state (presence
user -> node, node liveness, counts). See docs/cluster.md.

Routing rules:
- a push to users is first delivered to this node's own connections; the rest are
  looked up in presence (skipped for users with a route, ``routes``), grouped per
  holding node and sent to each of those nodes; the holding node answers with the
  users it did not reach. One request per node is in flight: the pushes to that node
  made meanwhile go together in the next one (``Batched``), in order, each caller
  getting its own answer. A node that is gone (no subscriber) or silent for
  ``broker_timeout`` counts as not reached; a user a route did not reach is looked
  up and pushed to again;
- a broadcast is delivered locally and published once to every other node;
- a tag push is delivered locally and sent only to nodes with members of the tags.
  Broadcasts and tag pushes leave in batches (one broker round trip for all that
  were queued meanwhile) and the broadcast worker does not wait for the broker, so
  it drains its queue in one go and each connection gets its frames in one write.

Acks (docs/cluster.md, "Acks across nodes"): unacked entries follow their user. A
node that loses a user while it still tracks entries for them records itself as a
holder of that user ("held" marker, kept ``hold_ttl``) before dropping the presence
entry. A node the user connects to learns the previous holders atomically with its
presence write (the overwritten presence entry and the held markers) and asks each
of them to hand the entries over (``Take``, which also closes an older login with
``REPLACED``); it adopts them with their sid, order and try count and re-sends them
at once. The old node forgets them without an outcome. Outcomes: ``outcomes``.

Durable entries and the offline inbox (``inbox``): every push with a sid is kept in
the broker for each target before it is delivered, a node reads a user's entries
when the user connects there (after registering, so none is missed), and acks and
expiries drop them in batches. Every node sweeps entries past their expiry whose
user is offline (their node died, or they never came back) and reports them
``expired`` (``offline``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import itertools
import logging
import random
import time
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from im_core.ack import AckOutcome, Unacked
from im_core.broker import Broker, Kept, LocalNode, Presence, Push, TagKept, missed_pushes
from im_core.errors import InvalidArgument, Unavailable
from im_core.metrics import RoundTrips
from im_core.tags import TagStat

from . import wire
from .batched import Batched
from .health import Health
from .held import Held, Item
from .inbox import Entry, now_ms
from .links import NO_LINK, Links, NoLink
from .outcomes import OutcomeSender
from .peer import Peer
from .routes import Routes

log = logging.getLogger("im.cluster")

R = TypeVar("R", bound=wire.Reply)
KeepRequest = tuple[list[str], Entry, bool]  # users, entry, bounded
MAX_OUTGOING = 4096  # queued broadcasts/tag pushes before publish waits for the broker
#: Bytes of pushes to one node in one request (a larger push goes alone): well under
#: NATS's default ``max_payload`` (1 MB), so batching makes no push too big to send.
PUSHES_BYTES = 256 << 10
FIRST_RETRY, LAST_RETRY = 0.05, 2.0  # backoff of the recovery loop, seconds
SWEEP_EVERY = 1.0  # seconds between sweeps of expired kept entries
SWEEP_BATCH = 500  # expired entries claimed per sweep round trip
MAX_FORGOTTEN = 100_000  # acked/expired entries waiting for the broker to come back
#: Disconnects writing to the broker at once: when thousands of sockets drop
#: together (a proxy restarts), the rest queue here rather than all racing one
#: ``broker_timeout`` and turning a busy broker into an outage.
LEAVING_IN_FLIGHT = 64


def _size(push: wire.Unicast) -> int:
    return len(push.payload) + sum(len(u) for u in push.users)


def grouped(batch: list[Item], node_id: int) -> Iterator[tuple[int, Push, bytes]]:
    """``(count, push, data)`` for each message to send for ``batch``, in order: a run of
    broadcasts to everyone goes as one ``Broadcasts`` of up to ``PUSHES_BYTES`` (its
    first push and how many it carries), anything else as one ``Deliver``."""
    i, n = 0, len(batch)
    while i < n:
        push, mid = batch[i]
        j, size = i + 1, len(push.payload)
        if push.kind == "all":
            while j < n and batch[j][0].kind == "all":
                size += len(batch[j][0].payload)
                if size > PUSHES_BYTES:
                    break
                j += 1
        if j - i > 1:
            data = wire.encode(wire.Broadcasts.of((m, p) for p, m in batch[i:j]), node_id)
        else:
            data = wire.encode(wire.Deliver.of(push), node_id, mid)
        yield j - i, push, data
        i = j


def merge_distribution(parts: Iterable[dict[str, TagStat]]) -> dict[str, TagStat]:
    """Per tag: members summed over nodes, the earliest creation time."""
    out: dict[str, TagStat] = {}
    for part in parts:
        for tag, stat in part.items():
            seen = out.get(tag)
            if seen is None:
                out[tag] = stat
            else:
                out[tag] = TagStat(tag, seen.number + stat.number, min(seen.created, stat.created))
    return out


class ClusterBroker(Broker):
    """Routing and peer handling over an abstract transport and store."""

    #: exceptions of the client library that mean "the broker cannot be reached"
    errors: tuple[type[BaseException], ...] = (OSError,)
    durable = True
    sweep_every = SWEEP_EVERY  # seconds between sweeps of expired kept entries

    def __init__(
        self, options: dict[str, Any], node_id: int | None = None, hold_ttl: float = 70.0
    ) -> None:
        self.wanted_id = node_id  # None: the broker picks a free id
        self.hold_ttl = hold_ttl
        self.prefix: str = str(options.get("broker_prefix") or "im")
        self.ttl = float(options.get("presence_ttl") or 10.0)
        self.timeout = float(options.get("broker_timeout") or 1.0)
        self.node_id = 0
        self.per_user = int(options.get("max_connections_per_user") or 1)
        self.health = Health(self.name, self.timeout, self.errors)
        self.peer = Peer(self)
        links = str(options.get("node_links") or "")
        self.links = Links(self, links) if links else None  # requests to nodes on this machine
        self.routes = Routes(self.ttl)  # user -> node, one connection per user only
        self.outcomes = OutcomeSender(self)
        # Users whose connection being set up is not their only one: it is owed
        # nothing (the user's kept entries went to their first device).
        self._sharing: set[str] = set()
        self._resync = False  # the store lost (or never got) this node's state
        self._recovery: asyncio.Task[None] | None = None
        self._retry_now = asyncio.Event()
        self._dirty = False
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.held = Held(self.name)  # broadcasts/tag pushes the broker did not take
        self._outgoing: list[Item] = []
        # Message ids of broadcasts and tag pushes (receivers deliver an id once). A
        # random start: a node restarted under the same id does not repeat recent ones.
        self._mids = itertools.count(random.getrandbits(40) + 1)
        self._sender: asyncio.Task[None] | None = None
        self._keeps: Batched[KeepRequest, list[str]] = Batched(self._keep_many, self.spawn)
        self._unicasts: dict[int, Batched[wire.Unicast, tuple[str, ...]]] = {}  # by node
        self._forgotten: list[tuple[str, int]] = []
        self._forgetter: asyncio.Task[None] | None = None
        self._unseen: dict[str, float] = {}  # last-seen writes a failed disconnect left
        # Presence entries a failed disconnect left (by connection id): removed once
        # the broker answers again. A re-registration only rewrites the connections
        # still here; without this, users who left meanwhile would stay "online".
        self._left: dict[str, Presence] = {}
        self._leaving = asyncio.Semaphore(LEAVING_IN_FLIGHT)
        self._seer: asyncio.Task[None] | None = None
        self.inbox_max_messages = int(options.get("inbox_max_messages") or 100)
        self.inbox_max_bytes = int(options.get("inbox_max_bytes") or 1 << 20)
        # A node that reads a user's entries tracks them from then on: their copies
        # here live at least this long more, so the sweep leaves them to that node.
        self.unacked_ttl = float(options.get("unacked_ttl") or 300.0)
        self.inbox_ttl = float(options.get("inbox_ttl") or 86400.0)

    # --- what a concrete broker provides -------------------------------------------

    @abc.abstractmethod
    async def _request(self, node: int, message: wire.Request) -> wire.Message | None:
        """Send ``message`` to ``node`` and return its answer; ``None`` when no such
        node listens. The caller bounds the wait (``_ask``: ``broker_timeout``)."""

    @abc.abstractmethod
    async def _notify(self, node: int, data: bytes) -> None:
        """Send an encoded message to ``node``, no answer expected."""

    @abc.abstractmethod
    async def _send_batch(self, batch: list[Item]) -> None:
        """Send broadcasts and tag pushes (as ``grouped`` encodes them), in order: a
        broadcast to every node once, a tag push to the nodes with members of its tags.
        Removes from ``batch`` what the broker took, so that what is left after a
        failure is sent again when it is back."""

    @abc.abstractmethod
    async def _locate(self, users: list[str]) -> dict[str, list[Presence]]:
        """The connections of ``users`` on live nodes, oldest first (absent when offline)."""

    @abc.abstractmethod
    async def _register(self, presence: Presence) -> tuple[list[Presence], set[int], bool]:
        """Record ``presence`` beside the user's other connections (at most
        ``per_user``: one of the same named device and then the oldest make room);
        return the entries it dropped (any node), the nodes holding unacked entries
        of the user (their markers are dropped when ``per_user`` is 1) and whether
        it is now the user's only connection."""

    @abc.abstractmethod
    async def _hold(self, user: str) -> None:
        """Mark this node as holding unacked entries of ``user`` for ``hold_ttl``;
        visible to a ``_register`` that runs after this returns."""

    @abc.abstractmethod
    async def _unregister(self, presence: Presence) -> None:
        """Drop ``presence``'s entry (nothing when a newer login replaced it)."""

    @abc.abstractmethod
    async def _counts(self) -> tuple[int, int]:
        """Online users and their connections, cluster-wide."""

    @abc.abstractmethod
    async def _update(self, presence: Presence) -> None:
        """Rewrite the entry of ``presence``'s login (node and connection) with its
        new tags; nothing when that entry is gone or a newer login overwrote it."""

    @abc.abstractmethod
    async def _heartbeat(self) -> None:
        """Refresh this node's liveness; set ``self._resync`` when the store lost it."""

    @abc.abstractmethod
    async def _reregister(self) -> None:
        """Write this node's connections (``node.local_users()``) again after an
        outage: an entry of another node newer than ours takes its place, and ours
        is closed."""

    @abc.abstractmethod
    async def _publish_state(self) -> None:
        """Publish this node's tag memberships and distribution."""

    @abc.abstractmethod
    async def _keep(self, users: list[str], entry: Entry, bounded: bool) -> list[str]:
        """Add ``entry`` to each user's kept entries (a ``bounded`` keep skips a user
        at ``inbox_max_messages`` / ``inbox_max_bytes``); return the users kept for."""

    @abc.abstractmethod
    async def _forget(self, batch: list[tuple[str, int]]) -> None:
        """Drop the (user, sid) entries of ``batch``."""

    @abc.abstractmethod
    async def _owed(
        self, user: str, tags: tuple[str, ...], horizon: int
    ) -> tuple[list[Entry], float | None, list[TagKept]]:
        """In one round trip where the store allows: the user's kept entries (none
        of which expires before ``horizon``, unix ms, from now on), when the user
        was last seen (None: not within the ttl) and the kept pushes of ``tags``."""

    @abc.abstractmethod
    async def _keep_for_tags(self, kept: TagKept, ttl_ms: int) -> None:
        """Add ``kept`` to each of its tags' kept pushes (``inbox_max_messages`` per
        tag, the oldest dropped)."""

    @abc.abstractmethod
    async def _saw(self, user: str, now: float) -> None:
        """Record that ``user`` left at ``now`` (kept ``inbox_ttl``), unless the
        broker does it in ``_unregister``."""

    async def _saw_many(self, seen: list[tuple[str, float]]) -> None:
        """Record when each user left: the writes a failed disconnect left undone.
        A broker that can batch them overrides this."""
        for user, at in seen:
            await self._saw(user, at)

    @abc.abstractmethod
    async def _sweep(self, now: int, limit: int) -> list[tuple[str, Entry]]:
        """Claim (remove) up to ``limit`` entries expired at ``now`` (unix ms) whose
        user is not online; each is claimed by one node only."""

    # --- background tasks ------------------------------------------------------------

    def healthy(self) -> bool:
        return self.health.up

    def round_trips(self) -> Mapping[str, RoundTrips]:
        return self.health.round_trips

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, (Unavailable, *self.errors)):
                log.debug("%s broker: %r", self.name, exc)  # the outage itself is logged once
            else:
                log.error("%s broker task failed", self.name, exc_info=exc)

    async def _open_links(self) -> None:
        """Listen for requests from the nodes on this machine (``--node-links``)."""
        if self.links is not None:
            try:
                await self.links.listen()
            except OSError as exc:
                where = self.links.dir
                raise ConnectionError(f"node links: cannot listen in {where}: {exc}") from exc

    async def _cancel_tasks(self) -> None:
        if self.links is not None:  # peers ask through the broker from now on
            await self.links.close()
        for task in (self._sender, self._forgetter, self._seer):  # what was queued still goes out
            if task is not None and not task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), self.timeout)
        self._stopping = True  # loops also check it: a cancel can be lost in a timeout
        for _ in range(3):
            if not self._tasks:
                return
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=self.timeout)
        log.warning("%s broker: %d tasks did not stop", self.name, len(self._tasks))

    # --- kept entries (durable acks, the offline inbox) ---------------------------------

    async def keep(self, push: Push, users: Sequence[str], ttl: float, bounded: bool) -> list[str]:
        if not users:
            return []
        now = now_ms()
        entry = Entry(push.sid, now, now + int(ttl * 1000), 0, push.payload)
        async with self.health.guard("keep"):
            return await self._keeps((list(users), entry, bounded))

    async def _keep_many(self, requests: list[KeepRequest]) -> list[list[str]]:
        """Several ``_keep`` calls; a broker that can pipeline them overrides this."""
        return [await self._keep(*request) for request in requests]

    def forget(self, user_id: str, sid: int) -> None:
        self._forgotten.append((user_id, sid))
        if self._forgetter is None or self._forgetter.done():
            self._forgetter = self.spawn(self._forget_all())

    async def _forget_all(self) -> None:
        """Drop acked and expired entries, batched: one round trip for all that
        ended meanwhile. During an outage they wait (the newest ``MAX_FORGOTTEN``)
        and go when the broker is back: a copy left behind would be re-sent on a
        later connect, or swept and reported expired after it was acked."""
        delay = FIRST_RETRY
        while self._forgotten and not self._stopping:
            batch, self._forgotten = self._forgotten, []
            try:
                async with self.health.guard("forget"):
                    await self._forget(batch)
                delay = FIRST_RETRY
            except Unavailable as exc:
                self._forgotten = (batch + self._forgotten)[-MAX_FORGOTTEN:]
                log.debug("%d kept entries not dropped yet: %s", len(batch), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_RETRY)

    def horizon(self) -> int:
        """Until when (unix ms) a node that reads a user's kept entries now tracks them."""
        return now_ms() + int(self.unacked_ttl * 1000)

    async def owed(self, user_id: str, tags: tuple[str, ...]) -> list[Kept]:
        if user_id in self._sharing:
            self._sharing.discard(user_id)
            return []
        try:
            async with self.health.guard("inbox"):
                entries, since, candidates = await self._owed(user_id, tags, self.horizon())
        except Unavailable:
            return []  # the connection goes on; they stay for a later one (or expire)
        owed = [e.kept() for e in entries]
        if since is not None and candidates:
            owed += missed_pushes(since, tags, candidates, time.time())
        return owed

    async def keep_for_tags(self, push: Push, ttl: float) -> None:
        kept = TagKept.of(push, time.time(), ttl)
        with contextlib.suppress(Unavailable):  # the push itself still goes out
            async with self.health.guard("keep for tags"):
                await self._keep_for_tags(kept, int(ttl * 1000))

    async def _sweeper(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.sweep_every)
            try:
                async with self.health.guard("sweep"):
                    expired = await self._sweep(now_ms(), SWEEP_BATCH)
            except Unavailable:
                continue
            for user, entry in expired:
                self.node.expired(entry.unacked(user), "offline")

    # --- keeping this node's state in the cluster -------------------------------------

    async def _keep_alive(self) -> None:
        """Heartbeat every ttl/3: one run of the recovery loop."""
        while not self._stopping:
            await asyncio.sleep(self.ttl / 3)
            await self.recover()

    def recover(self) -> asyncio.Task[None]:
        """Run the recovery loop now (or retry at once if it is waiting to): heartbeat
        -> re-register every local user when the store lost them -> publish state,
        retried with backoff until one pass succeeds. Brokers call it after a
        reconnect; the heartbeat runs it periodically."""
        self._retry_now.set()
        if self._recovery is None or self._recovery.done():
            self._recovery = self.spawn(self._recover())
        return self._recovery

    async def _recover(self) -> None:
        delay = FIRST_RETRY
        while not self._stopping:
            self._retry_now.clear()
            try:
                await self._heartbeat()
                # The broker answers: what waited for it goes out now, not after the
                # re-registration below (thousands of writes, on a broker just back).
                self._send_held()
                if self._resync:
                    self._resync = False
                    await self._reregister()
                    await self._unregister_left()
                await self._publish_state()
            except Unavailable:
                self._resync = True
            except Exception:
                log.exception("%s broker: recovery failed", self.name)
                self._resync = True
            else:
                self.health.set(True)
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._retry_now.wait()
            delay = min(delay * 2, LAST_RETRY)

    def _changed(self) -> None:
        """Local membership changed: publish counts and tags soon (coalesced)."""
        self._dirty = True
        if self._flusher is None or self._flusher.done():
            self._flusher = self.spawn(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0.02)
        while self._dirty and not self._stopping:
            self._dirty = False
            try:
                await self._publish_state()
            except Unavailable:
                self._resync = True
                return

    # --- routing ---------------------------------------------------------------------

    async def publish(self, push: Push) -> list[str]:
        node = self.node
        if push.kind != "users":
            node.deliver(push)  # local connections first: served even when the broker is down
            item = (push, next(self._mids))
            if self.held or not self._takes_broadcasts():
                self.held.add([item])  # sent when the broker is back, after those held
                return []
            self._outgoing.append(item)
            if self._sender is None or self._sender.done():
                self._sender = self.spawn(self._send_outgoing())
            elif len(self._outgoing) >= MAX_OUTGOING:
                await asyncio.shield(self._sender)  # back-pressure on a slow broker
            return []
        missing = node.deliver(push)
        # One connection per user: a user reached here is nowhere else. Several: any
        # user may have devices on other nodes too.
        targets = missing if self.per_user == 1 else list(push.users)
        if not targets:
            return []
        reached = await self._push_remote(push, targets)
        return [u for u in missing if u not in reached]

    async def _push_remote(self, push: Push, targets: list[str]) -> set[str]:
        """Push to ``targets`` on the other nodes that hold them; the users reached.
        Known routes first (``routes``); a user a route did not reach is looked up
        and pushed to again, to the node presence names if it is another one."""
        groups: dict[int, dict[str, None]] = {}
        routed: dict[str, int] = {}
        unknown = targets
        if self.per_user == 1:
            unknown = []
            for user in targets:
                at = self.routes.get(user)
                if at is None:
                    unknown.append(user)
                else:
                    groups.setdefault(at, {})[user] = None
                    routed[user] = at
        if unknown:
            await self._lookup(unknown, groups)
        reached = await self._push_groups(push, groups)
        stale = [u for u in routed if u not in reached]
        if stale:
            for user in stale:
                self.routes.forget(user)
            again: dict[int, dict[str, None]] = {}
            await self._lookup(stale, again, routed)
            reached |= await self._push_groups(push, again)
        return reached

    async def _lookup(
        self,
        users: list[str],
        groups: dict[int, dict[str, None]],
        asked: Mapping[str, int] | None = None,
    ) -> None:
        """Add each of ``users`` to the group of every other node presence names for
        it, except the node ``asked`` says was asked already; learn those routes."""
        async with self.health.guard("presence lookup"):
            where = await self._locate(users)
        learn = self.per_user == 1
        for user in users:
            for found in where.get(user, ()):
                at = found.node_id
                if at != self.node_id and (asked is None or asked.get(user) != at):
                    groups.setdefault(at, {})[user] = None
                    if learn:
                        self.routes.learn(user, at)

    async def _push_groups(self, push: Push, groups: dict[int, dict[str, None]]) -> set[str]:
        """Send ``push`` to each node for its group of users; the users reached (a
        user on several nodes counts only when every one of them reached it)."""
        if not groups:
            return set()
        if len(groups) == 1:  # the common case: no gather
            (at, users), = groups.items()
            return set(users).difference(await self._push_to(at, list(users), push))
        answers = await asyncio.gather(
            *(self._push_to(n, list(u), push) for n, u in groups.items())
        )
        reached = {u for users in groups.values() for u in users}
        for not_reached in answers:
            reached.difference_update(not_reached)
        return reached

    async def _push_to(self, node: int, users: list[str], push: Push) -> Iterable[str]:
        """Push to ``users`` on ``node``; return those it did not reach. Queued behind
        the request in flight to ``node``, if any: the wait, queued and in flight
        together, is bounded by ``broker_timeout``."""
        unicast = self._unicasts.get(node)
        if unicast is None:
            run = functools.partial(self._push_many, node)
            unicast = Batched(run, self.spawn, _size, PUSHES_BYTES, self.timeout)
            self._unicasts[node] = unicast
        try:
            return await unicast(wire.Unicast(tuple(users), push.sid, push.payload))
        except (Unavailable, TimeoutError) as exc:
            log.warning("push to node %d not confirmed: %s", node, exc or "timed out queued")
            return users

    async def _push_many(self, node: int, pushes: list[wire.Unicast]) -> list[tuple[str, ...]]:
        """Send ``pushes`` to ``node`` in one request; per push, the users not reached."""
        answer = await self._ask(node, wire.Pushes(tuple(pushes)), wire.NotReached)
        if answer is None:  # the node is gone
            return [p.users for p in pushes]
        if len(answer.users) != len(pushes):
            raise Unavailable(f"node {node} answered {len(answer.users)} of {len(pushes)} pushes")
        return list(answer.users)

    async def _send_outgoing(self) -> None:
        while self._outgoing:
            batch, self._outgoing = self._outgoing, []
            try:
                async with self.health.guard("broadcast"):
                    await self._send_batch(batch)
            except Unavailable:
                # What the broker did not take waits for it, before anything held
                # meanwhile (published once the failure was known, so later).
                self.held.add(batch + self._outgoing, before=True)
                self._outgoing = []

    def _takes_broadcasts(self) -> bool:
        """Whether a broadcast published now would reach the broker."""
        return self.health.up

    def _send_held(self) -> None:
        """The broker is back: send what it did not take meanwhile."""
        if self.held:
            self._outgoing[:0] = self.held.take()
            if self._outgoing and (self._sender is None or self._sender.done()):
                self._sender = self.spawn(self._send_outgoing())

    async def _ask(self, node: int, message: wire.Request, expect: type[R]) -> R | None:
        """Send a request to ``node`` and return its answer; None when it is gone.
        Raises ``Unavailable`` when it does not answer in time, or not with ``expect``."""
        async with self.health.guard(message.kind, peer=True):
            answer: wire.Message | NoLink | None = NO_LINK
            if self.links is not None:  # a node on this machine: straight to it
                answer = await self.links.request(node, message)
            if isinstance(answer, NoLink):
                answer = await self._request(node, message)
        if answer is None or isinstance(answer, expect):
            return answer
        raise Unavailable(f"node {node} answered {answer.kind!r} to {message.kind!r}")

    # --- Broker API ------------------------------------------------------------------

    async def connected(self, presence: Presence) -> None:
        user, device = presence.user_id, presence.device
        self.routes.forget(user)  # here now
        try:
            async with self.health.guard("register"):
                replaced, holders, alone = await self._register(presence)
        except Unavailable:
            self._resync = True  # accepted locally; registered when the broker is back
            self._changed()
            return
        self._changed()
        if not alone:  # what the user is owed went to their first device (``owed``)
            self._sharing.add(user)
        closes: dict[int, list[str]] = {}
        for old in replaced:
            if old.node_id != self.node_id:  # ours: the node replaced them already
                closes.setdefault(old.node_id, []).append(old.conn_id)
        nodes = (holders | closes.keys()) - {self.node_id}  # our entries: redelivered here
        if nodes:
            await asyncio.gather(
                *(self._take(n, user, device, tuple(closes.get(n, ()))) for n in sorted(nodes))
            )

    async def _take(self, node: int, user: str, device: str, replaced: tuple[str, ...]) -> None:
        """Ask ``node`` for the unacked entries of the user's ``device`` (closing the
        ``replaced`` connections there first) and adopt them here."""
        try:
            answer = await self._ask(node, wire.Take(user, device, replaced), wire.Taken)
        except Unavailable as exc:
            # The entries (if any) stay on that node and expire there.
            log.warning("unacked of %r on node %d not taken over: %s", user, node, exc)
            return
        if answer is None or not answer.entries:
            return  # the node is gone (and its entries with it), or held none
        entries = []
        for sid, tries, payload in answer.entries:
            entry = Unacked(user, sid, payload, 0.0, None, device)
            entry.tries = tries
            entries.append(entry)
        self.node.adopt_unacked(user, entries)
        if all(p.device != device for p in self.node.local_devices(user)):
            # Gone again meanwhile: say we hold them.
            with contextlib.suppress(Unavailable):
                async with self.health.guard("hold"):
                    await self._hold(user)

    async def disconnected(self, presence: Presence) -> None:
        user, now = presence.user_id, time.time()
        self._changed()
        try:
            async with self._leaving, self.health.guard("unregister"):
                # The marker first: a login elsewhere that no longer sees our presence
                # entry must see the marker. With several devices, another device of
                # the user here does not make the marker needless.
                if self.node.has_unacked(user) and (
                    self.per_user > 1 or self.node.local_presence(user) is None
                ):
                    await self._hold(user)
                await self._unregister(presence)
                await self._saw(user, now)
        except Unavailable:
            self._resync = True  # the presence entry is removed when the broker is back
            self._left.pop(presence.conn_id, None)
            self._left[presence.conn_id] = presence
            if len(self._left) > MAX_FORGOTTEN:
                del self._left[next(iter(self._left))]  # the oldest goes
            self._saw_later(user, now)

    async def _unregister_left(self) -> None:
        """Remove the presence entries of connections that closed while the broker
        did not answer (each removes only its own connection's entry)."""
        while self._left:
            batch = list(self._left.values())[:LEAVING_IN_FLIGHT]

            async def one(presence: Presence) -> None:
                async with self.health.guard("unregister"):
                    await self._unregister(presence)
                self._left.pop(presence.conn_id, None)

            await asyncio.gather(*(one(p) for p in batch))

    def _saw_later(self, user: str, at: float) -> None:
        """Write the user's last-seen time when the broker answers again: a lost one
        would cost the user the tag pushes kept for them (``owed``)."""
        self._unseen.pop(user, None)
        self._unseen[user] = at
        if len(self._unseen) > MAX_FORGOTTEN:
            del self._unseen[next(iter(self._unseen))]  # the oldest goes
        if self._seer is None or self._seer.done():
            self._seer = self.spawn(self._saw_all())

    async def _saw_all(self) -> None:
        delay = FIRST_RETRY
        while self._unseen and not self._stopping:
            await asyncio.sleep(delay)  # it just failed: give the broker a moment
            batch = list(self._unseen.items())
            self._unseen.clear()
            try:
                async with self.health.guard("last seen"):
                    await self._saw_many(batch)
                delay = FIRST_RETRY
            except Unavailable as exc:
                for user, at in batch:
                    self._unseen.setdefault(user, at)  # a newer disconnect's time wins
                log.debug("%d last-seen times not written yet: %s", len(batch), exc)
                delay = min(delay * 2, LAST_RETRY)

    def report(self, node_id: int, outcome: AckOutcome) -> bool:
        self.outcomes.report(node_id, outcome)
        return True

    async def presence(self, user_id: str) -> Presence | None:
        if self.per_user > 1:
            devices = await self.devices(user_id)
            return devices[-1] if devices else None
        here = self.node.local_presence(user_id)
        if here is not None:
            return here
        async with self.health.guard("presence"):
            found = (await self._locate([user_id])).get(user_id)
        # An entry of this node that is not here is stale (a close not yet unregistered).
        return found[-1] if found and found[-1].node_id != self.node_id else None

    async def devices(self, user_id: str) -> list[Presence]:
        if self.per_user == 1:
            return await super().devices(user_id)
        async with self.health.guard("presence"):
            found = (await self._locate([user_id])).get(user_id, [])
        remote = [p for p in found if p.node_id != self.node_id]
        return sorted([*remote, *self.node.local_devices(user_id)], key=lambda p: p.connected_at)

    async def online_count(self) -> int:
        async with self.health.guard("online count"):
            return (await self._counts())[0]

    async def connection_count(self) -> int:
        async with self.health.guard("online count"):
            return (await self._counts())[1]

    async def _remote(self, user_id: str, request: wire.Kick | wire.Retag) -> bool:
        """Ask every other node holding a connection of ``user_id`` to run
        ``request``; False when none did."""
        nodes = {p.node_id for p in await self.devices(user_id)} - {self.node_id}
        answers = await asyncio.gather(*(self._ask(n, request, wire.Done) for n in sorted(nodes)))
        ok = False
        for answer in answers:
            if answer is not None and answer.error:  # refused: the caller's mistake
                raise InvalidArgument(answer.error)
            ok = ok or (answer is not None and answer.ok)
        return ok

    async def kick(self, user_id: str, code: int, reason: str) -> bool:
        here = self.node.kick_local(user_id, code, reason, None)
        if here and self.per_user == 1:
            return True
        return await self._remote(user_id, wire.Kick(user_id, code, reason)) or here

    async def retag(self, user_id: str, add: tuple[str, ...], remove: tuple[str, ...]) -> bool:
        here = self.node.retag_local(user_id, add, remove)
        if here:
            await self.retagged(user_id)
            if self.per_user == 1:
                return True
        return await self._remote(user_id, wire.Retag(user_id, add, remove)) or here

    async def retagged(self, user: str) -> None:
        """The user's tags changed here: update the registration and publish state."""
        try:
            async with self.health.guard("retag"):
                for current in self.node.local_devices(user):
                    await self._update(current)
        except Unavailable:
            self._resync = True  # re-registered from the buckets when the broker is back
        self._changed()
        with contextlib.suppress(Unavailable):
            # Published before answering so a tag push right after the retag routes here.
            await self._publish_state()

    # --- helpers for subclasses ------------------------------------------------------

    def attach(self, node: LocalNode) -> None:
        self.node = node

    def local_tags(self) -> dict[str, TagStat]:
        """This node's non-empty tag groups."""
        return {t: s for t, s in self.node.local_distribution().items() if s.number}
