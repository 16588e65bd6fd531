"""The broker contract: how a push travels from the node that got it to the nodes
that hold its targets, and where cluster-wide state (presence, counts) lives.

One broker is chosen at startup through the ``im_broker`` hook. The in-memory
broker (``im_plugins.memory_broker``) serves a single node; Redis and NATS brokers
make several nodes one service. A broker calls back into its node only through
the ``LocalNode`` methods below.

Acks in a cluster (docs/cluster.md, "Acks across nodes"): a cluster broker hands
a user's unacked entries over to the node the user reconnects to
(``take_unacked`` on the holder, ``adopt_unacked`` on the new node, driven from
``connected`` / ``disconnected``), and carries each ack outcome to the node that
allocated its sid (``report`` -> that node's ``ack_outcome``). The memory broker
needs neither.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol

import attrs

from .ack import AckOutcome, Unacked
from .metrics import RoundTrips
from .tags import TagStat

Kind = Literal["users", "all", "tags_any", "tags_all"]


@attrs.frozen(slots=True)
class Push:
    """One message to deliver. ``sid`` is non-zero when the push wants an ack;
    ``store`` (tag pushes) keeps it for members who are away (``keep_for_tags``).
    ``at``: when it was made on this node (``time.perf_counter``), for the
    push -> socket write latency (``im_core.metrics``)."""

    kind: Kind
    payload: bytes
    users: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    sid: int = 0
    store: bool = False
    at: float = attrs.field(factory=time.perf_counter, eq=False, repr=False)


@attrs.frozen(slots=True)
class Kept:
    """A message a broker kept for a user: sent, oldest ``at`` (unix seconds) first,
    when the user connects."""

    at: float
    sid: int
    payload: bytes
    tries: int = 0


@attrs.frozen
class Presence:
    user_id: str
    node_id: int
    conn_id: str
    tags: tuple[str, ...]
    connected_at: float
    device: str = ""


@attrs.frozen(slots=True)
class NodeStat:
    """A live node of the cluster as the broker knows it: the users with a
    connection there and those connections."""

    node_id: int
    users: int
    connections: int


@attrs.frozen(slots=True)
class TagKept:
    """A tag push kept with ``store`` (``Broker.keep_for_tags``), until ``expires``."""

    at: float
    expires: float
    sid: int
    kind: Kind
    tags: tuple[str, ...]
    payload: bytes

    @classmethod
    def of(cls, push: Push, now: float, ttl: float) -> TagKept:
        return cls(now, now + ttl, push.sid, push.kind, push.tags, push.payload)


def missed_pushes(
    since: float, tags: Sequence[str], candidates: Iterable[TagKept], now: float
) -> list[Kept]:
    """What a user with ``tags``, last seen at ``since``, missed of ``candidates``:
    pushes made after ``since``, not expired, whose tags match (any / all)."""
    have = set(tags)
    out: dict[int, Kept] = {}
    for c in candidates:
        if c.at <= since or c.expires <= now or c.sid in out:
            continue
        if have.issuperset(c.tags) if c.kind == "tags_all" else not have.isdisjoint(c.tags):
            out[c.sid] = Kept(c.at, c.sid, c.payload)
    return sorted(out.values(), key=lambda k: (k.at, k.sid))


class LocalNode(Protocol):
    """What a broker may ask of the node it runs in."""

    def deliver(self, push: Push) -> list[str]:
        """Deliver to local connections; for a user push return the users not reached."""
        ...

    def local_presence(self, user_id: str) -> Presence | None: ...

    def local_count(self) -> int:
        """Users with a connection here."""
        ...

    def local_connections(self) -> int: ...

    def local_devices(self, user_id: str) -> list[Presence]:
        """Every connection of the user here, oldest first."""
        ...

    def local_users(self) -> dict[str, list[Presence]]:
        """Every user's connections here, oldest first (built on each call: for a
        re-registration after an outage, not for a hot path)."""
        ...

    def local_distribution(self) -> dict[str, TagStat]: ...

    def kick_local(self, user_id: str, code: int, reason: str, conn_id: str | None) -> bool:
        """Close the user's local connection (only ``conn_id``, when given)."""
        ...

    def retag_local(self, user_id: str, add: tuple[str, ...], remove: tuple[str, ...]) -> bool: ...

    def has_unacked(self, user_id: str) -> bool:
        """Whether this node tracks unacked entries of ``user_id``."""
        ...

    def take_unacked(self, user_id: str, device: str) -> list[Unacked]:
        """Give up the unacked entries of the user's ``device`` (in order, no outcome
        fires here), unless that device is connected here."""
        ...

    def adopt_unacked(self, user_id: str, entries: list[Unacked]) -> None:
        """Track entries another node gave up and re-send them if their device is here."""
        ...

    def ack_outcome(self, outcome: AckOutcome) -> None:
        """An outcome of a push this node allocated the sid of (fires ``im_ack_outcome``)."""
        ...

    def keep(self, user_id: str, sid: int, payload: bytes, ttl: float) -> bool:
        """Keep a message for ``user_id`` in this node's memory (the memory broker's
        inbox): sent when the user connects here, expired after ``ttl``. False when
        the user's inbox is full."""
        ...

    def expired(self, entry: Unacked, reason: str) -> None:
        """A kept entry no node tracks ran out (a broker's sweep): fire
        ``im_ack_expired`` here and report the outcome to the sid's origin."""
        ...


class Broker(abc.ABC):
    """Routes pushes and keeps cluster-wide state. Every method may raise
    ``errors.Unavailable`` when the backing service cannot be reached."""

    name: str = "broker"

    @abc.abstractmethod
    async def start(self, node: LocalNode) -> int:
        """Connect; from now on deliver pushes for this node through ``node.deliver``.
        Return this node's id (0-1023): the one the broker was given (``--node-id``)
        or one it leased; the node puts it in its sids and connection ids."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Leave the cluster (drop this node's presence) and disconnect."""

    @abc.abstractmethod
    async def publish(self, push: Push) -> list[str]:
        """Route ``push`` to the nodes that hold its targets; for a user push return
        the users that are not online (or could not be reached)."""

    @abc.abstractmethod
    async def connected(self, presence: Presence) -> None:
        """A user connected here: record presence and close any older login of the
        same user on other nodes (``REPLACED``)."""

    @abc.abstractmethod
    async def disconnected(self, presence: Presence) -> None:
        """A user's connection closed here (unless a newer one replaced it)."""

    @abc.abstractmethod
    async def online_count(self) -> int: ...

    @abc.abstractmethod
    async def presence(self, user_id: str) -> Presence | None:
        """The user's newest connection, if any."""

    async def devices(self, user_id: str) -> list[Presence]:
        """Every connection of the user, oldest first. The default (one connection
        per user) is ``presence``."""
        found = await self.presence(user_id)
        return [] if found is None else [found]

    async def connection_count(self) -> int:
        """Connections of online users. The default (one per user) is the user count."""
        return await self.online_count()

    @abc.abstractmethod
    async def distribution(self) -> dict[str, TagStat]: ...

    async def nodes(self) -> list[NodeStat]:
        """The live nodes of the cluster, this one included, any order. The default
        (a broker that does not list nodes) answers none."""
        return []

    @abc.abstractmethod
    async def kick(self, user_id: str, code: int, reason: str) -> bool: ...

    @abc.abstractmethod
    async def retag(self, user_id: str, add: tuple[str, ...], remove: tuple[str, ...]) -> bool: ...

    # --- the offline inbox and durable unacked entries (docs/protocol.md) ---------------

    #: Whether ``keep`` writes to a store that outlives this node (cluster brokers).
    #: Then every push with a sid is kept for its targets *before* it is delivered,
    #: the node a user connects to reads their entries with ``kept``, and acks and
    #: expiries ``forget`` them.
    durable: bool = False

    async def keep(self, push: Push, users: Sequence[str], ttl: float, bounded: bool) -> list[str]:
        """Keep ``push`` (it has a sid) for each of ``users`` until it is acked or
        expires ``ttl`` seconds from now; return the users it was kept for. A
        ``bounded`` keep skips users whose inbox is full (``--inbox-max-*``).
        Called for the offline users of a ``store`` push and, on a durable broker,
        for every target of a push with a sid."""
        return []

    def forget(self, user_id: str, sid: int) -> None:  # noqa: B027 (optional, no-op)
        """A kept entry was acked or expired: drop it. Must not block."""

    async def keep_for_tags(self, push: Push, ttl: float) -> None:  # noqa: B027
        """Keep a tag push made with ``store`` for ``ttl`` seconds (at most
        ``--inbox-max-messages`` per tag, the oldest dropped first): see ``owed``."""

    async def owed(self, user_id: str, tags: tuple[str, ...]) -> list[Kept]:
        """What was kept for a user who is connecting (after ``connected``), any
        order: on a durable broker the user's kept entries, with their try counts;
        and the kept tag pushes they missed: made after the user was last seen
        (their last disconnect, which brokers record for ``--inbox-ttl``) and
        matching the tags they connect with (``missed_pushes``). No missed tag push
        for a user not seen within the ttl: they were not a member while away."""
        return []

    def report(self, node_id: int, outcome: AckOutcome) -> bool:
        """Carry ``outcome`` to node ``node_id`` (the sid's origin, not this node).
        Return False when this broker does not reach other nodes: the outcome is
        then reported here. Must not block; delivery is best effort."""
        return False

    def healthy(self) -> bool:
        """False while the backing service is unreachable."""
        return True

    # --- for metrics (read when scraped; must not block) -------------------------------

    def round_trips(self) -> Mapping[str, RoundTrips]:
        """Calls to the backing service by operation (``presence_lookup``,
        ``broadcast``, ``peer_take``, ...): their durations and failures. Empty for
        a broker with no backing service."""
        return {}
