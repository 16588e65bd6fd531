"""What every cluster broker shares: the messages nodes send each other, the routing
of a push to the nodes that hold its targets, and the answers to peers' requests.

A concrete broker (``redis_broker``, ``nats_broker``) supplies the transport (one
node, every node, the nodes of some tags, request/reply) and the cluster-wide state
(presence user -> node, node liveness, counts). See docs/cluster.md.

Routing rules:
- a push to users is first delivered to this node's own connections; the rest are
  looked up in presence, grouped per holding node and sent to each of those nodes
  as one request; the holding node answers with the users it did not reach. A node
  that is gone (no subscriber) or silent for ``broker_timeout`` counts as not reached;
- a broadcast is delivered locally and published once to every other node;
- a tag push is delivered locally and sent only to nodes with members of the tags.
  Broadcasts and tag pushes leave in batches (one broker round trip for all that
  were queued meanwhile) and the broadcast worker does not wait for the broker, so
  it drains its queue in one go and each connection gets its frames in one write.

Acks (docs/cluster.md, "Acks across nodes"):
- unacked entries follow their user. A node that loses a user while it still
  tracks entries for them records itself as a holder of that user ("held"
  marker, kept ``hold_ttl``) before dropping the presence entry. A node the user
  connects to learns the previous holders atomically with its presence write
  (the overwritten presence entry and the held markers) and asks each of them to
  hand the entries over ("take", which also closes an older login with
  ``REPLACED``); it adopts them with their sid, order and try count and
  re-sends them at once. The old node forgets them without an outcome;
- each ack outcome goes to the node that allocated its sid ("ackr"), where
  ``im_ack_outcome`` fires: queued and sent in order by one task, one message per
  node for all outcomes queued meanwhile; best effort (lost in an outage).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import orjson

from im_core.ack import AckOutcome, Unacked
from im_core.broker import Broker, LocalNode, Presence, Push
from im_core.errors import CloseCode, InvalidArgument, Unavailable
from im_core.tags import TagStat

log = logging.getLogger("im.cluster")

Header = dict[str, Any]
MAX_OUTGOING = 4096  # queued broadcasts/tag pushes before publish waits for the broker


def add_options(add: Callable[..., None]) -> None:
    """Options every cluster broker reads (declared by each broker plugin)."""
    add(
        "broker_prefix",
        "im",
        "namespace of the cluster's keys/channels/subjects; clusters sharing one "
        "broker need distinct prefixes",
    )
    add(
        "presence_ttl",
        10.0,
        "seconds a node's presence outlives its last heartbeat (heartbeat every ttl/3)",
        type=float,
    )
    add(
        "broker_timeout",
        1.0,
        "seconds to wait for the broker or a peer node before failing with UNAVAILABLE",
        type=float,
    )


# --- the wire format between nodes: JSON header, newline, raw payload --------------


def encode(header: Header, payload: bytes = b"") -> bytes:
    return orjson.dumps(header) + b"\n" + payload


def decode(data: bytes) -> tuple[Header, bytes]:
    cut = data.index(b"\n")
    return orjson.loads(data[:cut]), data[cut + 1 :]


def push_message(origin: int, push: Push, users: Iterable[str] | None = None) -> bytes:
    header: Header = {"t": "push", "o": origin, "k": push.kind}
    if push.kind == "users":
        header["u"] = list(push.users if users is None else users)
    else:
        header["g"] = list(push.tags)
    if push.sid:
        header["s"] = push.sid
    return encode(header, push.payload)


def outcome_message(origin: int, outcomes: list[AckOutcome]) -> bytes:
    """Ack outcomes for one node: [outcome, user, sid, tries, reason, payload length]
    each in the header, the expired payloads one after another after it."""
    rows = [[o.outcome, o.user_id, o.sid, o.tries, o.reason, len(o.payload)] for o in outcomes]
    return encode({"t": "ackr", "o": origin, "a": rows}, b"".join(o.payload for o in outcomes))


def read_outcomes(header: Header, payload: bytes) -> list[AckOutcome]:
    out, at = [], 0
    for outcome, user, sid, tries, reason, size in header["a"]:
        out.append(AckOutcome(outcome, user, sid, tries, reason, payload[at : at + size]))
        at += size
    return out


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


def hold_ttl(options: Any) -> float:
    """How long a "held" marker outlives the disconnect: an offline user's entries
    expire ``ack_keep_offline`` after the first re-send that found them gone."""
    return float(options.ack_keep_offline + 2 * options.ack_interval + 1.0)


class ClusterBroker(Broker):
    """Routing and peer handling over an abstract transport and store."""

    #: exceptions of the client library that mean "the broker cannot be reached"
    errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(
        self, options: dict[str, Any], node_id: int | None = None, hold_ttl: float = 70.0
    ) -> None:
        self.wanted_id = node_id  # None: the broker picks a free id
        self.hold_ttl = hold_ttl
        self.prefix: str = str(options.get("broker_prefix") or "im")
        self.ttl = float(options.get("presence_ttl") or 10.0)
        self.timeout = float(options.get("broker_timeout") or 1.0)
        self.node_id = 0
        # This node's users as registered in the cluster: re-registered after an outage.
        self.local: dict[str, Presence] = {}
        self._up = False
        self._resync = False
        self._dirty = False
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.dropped = 0  # broadcasts/tag pushes that reached only this node (outage)
        self._outgoing: list[tuple[Push, bytes]] = []
        self._sender: asyncio.Task[None] | None = None
        self._outcomes: list[tuple[int, AckOutcome]] = []
        self._reporter: asyncio.Task[None] | None = None
        self.lost_outcomes = 0  # ack outcomes that could not be sent (outage)

    # --- what a concrete broker provides -------------------------------------------

    @abc.abstractmethod
    async def _request(self, node: int, data: bytes) -> bytes | None:
        """Send ``data`` to ``node`` and return its answer; ``None`` when no such node
        listens. Raise ``TimeoutError`` when it does not answer in time."""

    @abc.abstractmethod
    async def _notify(self, node: int, data: bytes) -> None:
        """Send ``data`` to ``node``, no answer expected."""

    @abc.abstractmethod
    async def _send_batch(self, batch: list[tuple[Push, bytes]]) -> None:
        """Send broadcasts and tag pushes, in order: a broadcast to every node once,
        a tag push to the nodes with members of its tags."""

    @abc.abstractmethod
    async def _locate(self, users: list[str]) -> dict[str, Presence]:
        """Presence of ``users`` on live nodes (absent when offline)."""

    @abc.abstractmethod
    async def _register(self, presence: Presence) -> tuple[Presence | None, set[int]]:
        """Record ``presence``; return the entry it overwrote (any node) and the
        nodes holding unacked entries of the user (their markers are dropped)."""

    @abc.abstractmethod
    async def _hold(self, user: str) -> None:
        """Mark this node as holding unacked entries of ``user`` for ``hold_ttl``;
        visible to a ``_register`` that runs after this returns."""

    @abc.abstractmethod
    async def _unregister(self, presence: Presence) -> None:
        """Drop ``presence`` unless a newer login overwrote it."""

    @abc.abstractmethod
    async def _heartbeat(self) -> None:
        """Refresh this node's liveness; set ``self._resync`` when the store lost it."""

    @abc.abstractmethod
    async def _reregister(self) -> None:
        """Write every entry of ``self.local`` again (after an outage)."""

    @abc.abstractmethod
    async def _publish_state(self) -> None:
        """Publish this node's tag memberships and distribution."""

    # --- health and failure handling --------------------------------------------------

    def healthy(self) -> bool:
        return self._up

    def _set_up(self, up: bool, why: object = "") -> None:
        if up != self._up:
            if up:
                log.info("%s broker: connected (node %d)", self.name, self.node_id)
            else:
                log.warning("%s broker: unavailable: %s", self.name, why)
        self._up = up

    @contextlib.asynccontextmanager
    async def _guard(self, what: str, peer: bool = False) -> AsyncIterator[None]:
        """Bound a call to the broker by ``broker_timeout``; failures become
        ``Unavailable`` so API calls answer 503 instead of hanging. A ``peer`` call
        waits for another node: its timeout says nothing about the broker."""
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except (TimeoutError, *self.errors) as exc:
            if not (peer and isinstance(exc, TimeoutError)):
                self._set_up(False, exc)
            raise Unavailable(f"{self.name} broker unavailable ({what}): {exc!r}") from exc

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
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

    async def _cancel_tasks(self) -> None:
        if self._sender is not None and not self._sender.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._sender), self.timeout)
        self._stopping = True  # loops also check it: a cancel can be lost in a timeout
        for _ in range(3):
            if not self._tasks:
                return
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=self.timeout)
        log.warning("%s broker: %d tasks did not stop", self.name, len(self._tasks))

    async def _heartbeat_loop(self) -> None:
        """Keep this node alive in the cluster; repair state after an outage."""
        period = self.ttl / 3
        while not self._stopping:
            await asyncio.sleep(period)
            try:
                await self._heartbeat()
                if self._resync:
                    self._resync = False
                    await self._reregister()
                await self._publish_state()
            except Unavailable:
                self._resync = True
            except Exception:
                log.exception("%s broker heartbeat failed", self.name)
                self._resync = True
            else:
                self._set_up(True)

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
            if not self._up:
                self.dropped += 1  # the outage is logged once, not per push
                return []
            self._outgoing.append((push, push_message(self.node_id, push)))
            if self._sender is None or self._sender.done():
                self._sender = self.spawn(self._send_outgoing())
            elif len(self._outgoing) >= MAX_OUTGOING:
                await asyncio.shield(self._sender)  # back-pressure on a slow broker
            return []
        missing = node.deliver(push)
        if not missing:
            return []
        async with self._guard("presence lookup"):
            where = await self._locate(missing)
        groups: dict[int, list[str]] = {}
        for user in missing:
            found = where.get(user)
            if found is not None and found.node_id != self.node_id:
                groups.setdefault(found.node_id, []).append(user)
        if not groups:
            return missing
        answers = await asyncio.gather(*(self._push_to(n, u, push) for n, u in groups.items()))
        reached = {u for users in groups.values() for u in users}
        for not_reached in answers:
            reached.difference_update(not_reached)
        return [u for u in missing if u not in reached]

    async def _push_to(self, node: int, users: list[str], push: Push) -> list[str]:
        """Push to ``users`` on ``node``; return those it did not reach."""
        try:
            async with self._guard("push", peer=True):
                answer = await self._request(node, push_message(self.node_id, push, users))
        except Unavailable as exc:
            log.warning("push to node %d not confirmed: %s", node, exc)
            return users
        if answer is None:
            return users  # the node is gone
        return list(orjson.loads(answer)["m"])

    async def _send_outgoing(self) -> None:
        while self._outgoing:
            batch, self._outgoing = self._outgoing, []
            try:
                async with self._guard("broadcast"):
                    await self._send_batch(batch)
            except Unavailable as exc:
                self.dropped += len(batch)
                log.debug("%d broadcasts reached only this node: %s", len(batch), exc)

    # --- answers to peers --------------------------------------------------------------

    async def handle(self, header: Header, payload: bytes) -> bytes | None:
        """One message from a peer; returns the answer for request messages."""
        kind = header["t"]
        node = self.node
        if kind == "push":
            if header["k"] != "users" and header["o"] == self.node_id:
                return None  # our own broadcast, already delivered locally
            push = Push(
                header["k"],
                payload,
                users=tuple(header.get("u", ())),
                tags=tuple(header.get("g", ())),
                sid=header.get("s", 0),
            )
            missing = node.deliver(push)
            return orjson.dumps({"m": missing}) if push.kind == "users" else None
        if kind == "ackr":
            for outcome in read_outcomes(header, payload):
                node.ack_outcome(outcome)
            return None
        if kind == "take":
            user = header["u"]
            if "i" in header:  # close the older login first: then the entries are free
                node.kick_local(user, header["c"], header["r"], header["i"])
            entries = node.take_unacked(user)
            if entries:
                log.debug("handing %d unacked of %r to node %d", len(entries), user, header["o"])
            wire = [[e.sid, e.tries, base64.b64encode(e.payload).decode()] for e in entries]
            return orjson.dumps({"e": wire})
        if kind == "kick":
            ok = node.kick_local(header["u"], header["c"], header["r"], header.get("i"))
            return orjson.dumps({"ok": ok})
        if kind == "retag":
            user = header["u"]
            try:
                ok = node.retag_local(user, tuple(header["a"]), tuple(header["d"]))
            except InvalidArgument as exc:
                return orjson.dumps({"ok": True, "e": str(exc)})
            if ok:
                await self._retagged(user)
            return orjson.dumps({"ok": ok})
        log.warning("%s broker: unknown message %r", self.name, kind)
        return None

    async def _retagged(self, user: str) -> None:
        current = self.node.local_presence(user)
        if current is not None:
            self.local[user] = current
        self._changed()
        with contextlib.suppress(Unavailable):
            # Published before answering so a tag push right after the retag routes here.
            await self._publish_state()

    # --- Broker API ------------------------------------------------------------------

    async def connected(self, presence: Presence) -> None:
        self.local[presence.user_id] = presence
        try:
            async with self._guard("register"):
                old, holders = await self._register(presence)
        except Unavailable:
            self._resync = True  # accepted locally; registered when the broker is back
            self._changed()
            return
        self._changed()
        older = old if old is not None and old.node_id != self.node_id else None
        if older is not None:
            holders.add(older.node_id)
        holders.discard(self.node_id)  # our own entries: the node redelivers them itself
        if holders:
            older_node = None if older is None else older.node_id
            takes = (
                self._take(n, presence.user_id, older if n == older_node else None)
                for n in sorted(holders)
            )
            await asyncio.gather(*takes)

    async def _take(self, node: int, user: str, older: Presence | None) -> None:
        """Ask ``node`` for the user's unacked entries (closing ``older`` there) and
        adopt them here."""
        message: Header = {"t": "take", "o": self.node_id, "u": user}
        if older is not None:
            message.update(c=int(CloseCode.REPLACED), r="replaced by a new login", i=older.conn_id)
        try:
            async with self._guard("take over unacked", peer=True):
                answer = await self._request(node, encode(message))
        except Unavailable as exc:
            # The entries (if any) stay on that node and expire there.
            log.warning("unacked of %r on node %d not taken over: %s", user, node, exc)
            return
        if answer is None:
            return  # the node is gone, and its entries with it
        entries = []
        for sid, tries, payload in orjson.loads(answer)["e"]:
            entry = Unacked(user, sid, base64.b64decode(payload), 0.0)
            entry.tries = tries
            entries.append(entry)
        if not entries:
            return
        self.node.adopt_unacked(user, entries)
        if self.node.local_presence(user) is None:  # gone again meanwhile: say we hold them
            with contextlib.suppress(Unavailable):
                async with self._guard("hold"):
                    await self._hold(user)

    async def disconnected(self, presence: Presence) -> None:
        current = self.local.get(presence.user_id)
        if current is not None and current.conn_id == presence.conn_id:
            del self.local[presence.user_id]
        self._changed()
        try:
            async with self._guard("unregister"):
                # The marker first: a login elsewhere that no longer sees our presence
                # entry must see the marker.
                user = presence.user_id
                if self.node.has_unacked(user) and self.node.local_presence(user) is None:
                    await self._hold(user)
                await self._unregister(presence)
        except Unavailable:
            self._resync = True

    # --- ack outcomes to the node that allocated the sid -------------------------

    def report(self, node_id: int, outcome: AckOutcome) -> bool:
        if not self._up:
            self.lost_outcomes += 1  # the outage is logged once
            return True
        self._outcomes.append((node_id, outcome))
        if self._reporter is None or self._reporter.done():
            self._reporter = self.spawn(self._send_outcomes())
        return True

    async def _send_outcomes(self) -> None:
        """Send queued outcomes, one message per origin node for all queued meanwhile."""
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            per_node: dict[int, list[AckOutcome]] = {}
            for node, outcome in batch:
                per_node.setdefault(node, []).append(outcome)
            for node, outcomes in per_node.items():
                try:
                    async with self._guard("ack outcomes"):
                        await self._notify(node, outcome_message(self.node_id, outcomes))
                except Unavailable as exc:
                    self.lost_outcomes += len(outcomes)
                    log.debug("%d ack outcomes not sent: %s", len(outcomes), exc)

    async def presence(self, user_id: str) -> Presence | None:
        here = self.node.local_presence(user_id)
        if here is not None:
            return here
        async with self._guard("presence"):
            found = (await self._locate([user_id])).get(user_id)
        return found if found is None or found.node_id != self.node_id else None

    async def _remote(self, user_id: str, message: Header) -> bool:
        """Ask the node holding ``user_id`` to run ``message``; False when offline."""
        where = await self.presence(user_id)
        if where is None:
            return False
        async with self._guard(message["t"], peer=True):
            answer = await self._request(where.node_id, encode(message))
        if answer is None:
            return False
        reply = orjson.loads(answer)
        if "e" in reply:  # the holding node refused it: the caller's mistake
            raise InvalidArgument(reply["e"])
        return bool(reply["ok"])

    async def kick(self, user_id: str, code: int, reason: str) -> bool:
        if self.node.kick_local(user_id, code, reason, None):
            return True
        message = {"t": "kick", "o": self.node_id, "u": user_id, "c": code, "r": reason}
        return await self._remote(user_id, message)

    async def retag(self, user_id: str, add: tuple[str, ...], remove: tuple[str, ...]) -> bool:
        if self.node.retag_local(user_id, add, remove):
            await self._retagged(user_id)
            return True
        message = {"t": "retag", "o": self.node_id, "u": user_id, "a": list(add), "d": list(remove)}
        return await self._remote(user_id, message)

    # --- helpers for subclasses ------------------------------------------------------

    def attach(self, node: LocalNode) -> None:
        self.node = node

    def local_tags(self) -> dict[str, TagStat]:
        """This node's non-empty tag groups."""
        return {t: s for t, s in self.node.local_distribution().items() if s.number}
