"""The NATS broker: routing by subject interest, presence in JetStream KV.

Subjects (``P`` = broker prefix): ``P.n.N`` requests to node N, answered on
``P.r.M.T.ID`` (M: the asking node, T: its instance token, so a late answer never
reaches a successor with the same id; ID: a counter of its requests; the server's
"no responders" status arriving there means node N is gone), ``P.all`` broadcasts,
``P.t.HEX`` tag pushes: a node subscribes to the subject of every tag it has members
of, so NATS itself routes a tag push only to those nodes.

KV buckets (in memory; nodes re-register after a NATS restart):
``P_nodes``  key ``nN`` -> {token, count, distribution}; the bucket's max age is the
             presence TTL, so a node that stops writing drops out by itself;
``P_presence`` key base64(user) -> the user's connections, oldest first: a JSON list
             of {node, token, conn_id, connected_at, tags, device}, written
             compare-and-set; an entry counts only while the node entry with the
             same token lives;
``P_held``   key base64(user) -> [node ids holding unacked entries of the offline
             user]; the bucket's max age is the hold ttl.
``P_inbox``  key base64(user) -> the user's kept entries (``inbox.pack_records``),
             written compare-and-set; on disk, so they outlive a NATS restart.
``P_seen``   key base64(user) -> when the user last left (max age: the inbox ttl);
``P_tagbox`` key ``t`` + hex(tag) -> the tag's kept pushes (JSON list), on disk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import os
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import attrs
import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import StorageType
from nats.js.kv import KeyValue

from im_core.broker import LocalNode, NodeStat, Presence, TagKept
from im_core.tags import TagStat

from .. import wire
from ..base import ClusterBroker, grouped, merge_distribution
from ..held import Item
from ..inbox import RECORD, Entry, pack_records, pack_tag_push, unpack_records, unpack_tag_push
from ..options import without_secrets

log = logging.getLogger("im.nats")
MISSING = (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError)
T = TypeVar("T")
WRONG_LAST_SEQUENCE = 10071  # JetStream: the key was written since we read it
NO_RESPONDERS = "503"  # the server's status to a request no subscriber got
SWEEP_READS = 1000  # users' kept entries read per sweep round (the rest in later rounds)


def user_key(user: str) -> str:
    return "u" + base64.urlsafe_b64encode(user.encode()).decode()


async def gather_bounded(calls: list[Coroutine[Any, Any, T]], limit: int = 64) -> list[T]:
    """``asyncio.gather`` with at most ``limit`` requests to NATS in flight: a push
    to thousands of users must not open thousands of requests at once."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Coroutine[Any, Any, T]) -> T:
        try:
            async with gate:
                return await call
        finally:
            call.close()  # a no-op once awaited; cancelled before that: no warning

    return list(await asyncio.gather(*(one(c) for c in calls)))


def _any_due(value: bytes, now: int) -> bool:
    return any(e.expires_ms <= now for e in unpack_records(value))


def user_of(key: str) -> str:
    return base64.urlsafe_b64decode(key[1:]).decode()


class NatsBroker(ClusterBroker):
    name = "nats"
    errors = (nats.errors.Error, OSError)
    sweep_every = 5.0  # the sweep reads every user's kept entries: less often than Redis

    def __init__(
        self, options: dict[str, Any], node_id: int | None = None, hold_ttl: float = 70.0
    ) -> None:
        super().__init__(options, node_id, hold_ttl)
        self.url: str = str(options.get("nats_url") or "nats://127.0.0.1:4222")
        self.token = os.urandom(8).hex()
        self._rids = itertools.count(1)
        self._replies: dict[str, asyncio.Future[Msg]] = {}  # request id -> its answer
        self._reply_to = ""  # P.r.M.T. (set once the node id is known)
        self._tag_subs: dict[str, Subscription] = {}
        self._node_rev = 0
        self._sweep_from = 0  # where the next sweep round's window of users starts

    def _subject(self, *parts: object) -> str:
        return ".".join((self.prefix, *map(str, parts)))

    def _tag_subject(self, tag: str) -> str:
        return self._subject("t", tag.encode().hex())

    # --- lifecycle -----------------------------------------------------------------

    async def start(self, node: LocalNode) -> int:
        self.attach(node)
        self.nc = NatsClient()
        try:
            # nats-py retries the first connect forever with unlimited reconnects:
            # bound it so a node without its broker fails to start instead of hanging.
            async with asyncio.timeout(max(3 * self.timeout, 2.0)):
                await self.nc.connect(
                    self.url,
                    name=f"im-{self.prefix}",
                    connect_timeout=max(1, int(self.timeout)),
                    reconnect_time_wait=0.25,  # type: ignore[arg-type]  # seconds; annotated int
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect,
                    error_cb=self._on_error,
                )
        except Exception as exc:
            with contextlib.suppress(Exception):
                await self.nc.close()
            # ConnectionError is an OSError: im-run reports it and exits with status 1.
            raise ConnectionError(f"nats broker: cannot reach {self.url}: {exc!r}") from exc
        self.js = self.nc.jetstream(timeout=self.timeout)
        try:
            async with asyncio.timeout(self.timeout * 5):
                await self._ensure_buckets()
                self.node_id = await self._claim()
                await self.nc.subscribe(self._subject("n", self.node_id), cb=self._on_request)
                self._reply_to = self._subject("r", self.node_id, self.token, "")
                await self.nc.subscribe(self._reply_to + "*", cb=self._on_reply)
                await self.nc.subscribe(self._subject("all"), cb=self._on_push)
                await self.nc.flush()
        except Exception as exc:
            await self.nc.close()
            raise ConnectionError(f"nats broker: cannot use {self.url}: {exc!r}") from exc
        await self._open_links()
        self.health.up = True
        self.spawn(self._keep_alive())
        self.spawn(self._sweeper())
        log.info(
            "nats broker: node %d joined %r at %s",
            self.node_id,
            self.prefix,
            without_secrets(self.url),
        )
        return self.node_id

    async def _ensure_buckets(self) -> None:
        self.presence_kv = await self._bucket("presence", None)
        self.nodes_kv = await self._bucket("nodes", self.ttl)
        self.held_kv = await self._bucket("held", self.hold_ttl)
        self.inbox_kv = await self._bucket("inbox", None, StorageType.FILE)
        self.seen_kv = await self._bucket("seen", self.inbox_ttl, StorageType.FILE)
        self.tagbox_kv = await self._bucket("tagbox", self.inbox_ttl, StorageType.FILE)

    async def _bucket(
        self, name: str, ttl: float | None, storage: StorageType = StorageType.MEMORY
    ) -> KeyValue:
        bucket = f"{self.prefix}_{name}"
        try:
            return await self.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return await self.js.create_key_value(
                bucket=bucket, history=1, ttl=ttl, storage=storage
            )

    def _node_entry(self) -> bytes:
        stats = self.local_tags()
        return orjson.dumps(
            {
                "i": self.token,
                "c": self.node.local_count(),
                "k": self.node.local_connections(),
                "d": {t: [s.number, s.created] for t, s in stats.items()},
            }
        )

    async def _claim(self) -> int:
        if self.wanted_id is not None:
            self._node_rev = await self.nodes_kv.put(f"n{self.wanted_id}", self._node_entry())
            return self.wanted_id
        start = random.randrange(1024)
        for i in range(1024):
            node_id = (start + i) % 1024
            try:
                self._node_rev = await self.nodes_kv.create(f"n{node_id}", self._node_entry())
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return node_id
        raise ConnectionError("nats broker: all 1024 node ids are taken")

    async def stop(self) -> None:
        if not hasattr(self, "nodes_kv"):
            return  # it never started (start closed what it opened)
        await self._cancel_tasks()
        try:
            async with asyncio.timeout(self.timeout):
                await self.nodes_kv.delete(f"n{self.node_id}")
        except Exception as exc:
            log.warning("nats broker: could not leave the cluster cleanly: %r", exc)
        try:
            async with asyncio.timeout(self.timeout):
                await self.nc.close()
        except Exception:
            pass

    # --- connection events ---------------------------------------------------------

    async def _on_disconnect(self) -> None:
        if not self._stopping:
            self.health.set(False, "disconnected from NATS")

    async def _on_reconnect(self) -> None:
        # nats-py has re-subscribed; the server may have lost the KV (restart).
        self._resync = True
        self.recover()

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats broker: %r", exc)

    # --- incoming ---------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        try:
            read = self.peer.read(msg.data)
            if read is None:
                return
            origin, ref, message = read
            answer = await self.peer.answer(origin, message, ref)
            if msg.reply and answer is not None:
                await msg.respond(wire.encode(answer, self.node_id, ref))
        except Exception:
            log.exception("nats broker: bad message from a peer")

    async def _on_reply(self, msg: Msg) -> None:
        waiter = self._replies.get(msg.subject[len(self._reply_to) :])
        if waiter is not None and not waiter.done():  # else: asked too long ago
            waiter.set_result(msg)

    async def _on_push(self, msg: Msg) -> None:
        """A broadcast or tag push; ``ref`` is its message id (a push to several tags
        arrives once per tag: ``Peer`` delivers it once)."""
        try:
            read = self.peer.read(msg.data)
            if read is None:
                return
            origin, ref, message = read
            await self.peer.answer(origin, message, ref)
        except Exception:
            log.exception("nats broker: bad message from a peer")

    # --- transport ---------------------------------------------------------------------

    def _takes_broadcasts(self) -> bool:
        # Connected is enough: a publish is core NATS, whatever JetStream (presence,
        # the health this node reports) answers; the client buffers it meanwhile.
        return bool(self.nc.is_connected)

    def _check(self) -> None:
        if not self.nc.is_connected:
            raise ConnectionError("not connected to NATS")

    async def _request(self, node: int, message: wire.Request) -> wire.Message | None:
        """Request/reply on this node's own reply subjects rather than
        ``nc.request``: a counter names the request (no random token) and the
        caller's ``Health.guard`` bounds the wait (no ``wait_for`` of its own)."""
        self._check()
        rid = str(next(self._rids))
        waiter: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._replies[rid] = waiter
        try:
            data = wire.encode(message, self.node_id)
            await self.nc.publish(self._subject("n", node), data, reply=self._reply_to + rid)
            msg = await waiter
        finally:
            del self._replies[rid]
        if not msg.data and msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            return None
        read = self.peer.read(msg.data)
        if read is None:
            raise TimeoutError(f"node {node} answered what this node cannot read")
        return read[2]

    async def _notify(self, node: int, data: bytes) -> None:
        self._check()
        await self.nc.publish(self._subject("n", node), data)

    async def _send_batch(self, batch: list[Item]) -> None:
        self._check()
        publish = self.nc.publish
        taken = 0  # a publish that returned is in the client's buffer: sent, also after a reconnect
        try:
            for count, push, data in grouped(batch, self.node_id):
                if push.kind == "all":
                    await publish(self._subject("all"), data)
                elif push.kind == "tags_all" or len(push.tags) == 1:
                    # Any node with a member of all the tags has a member of the first one.
                    await publish(self._tag_subject(push.tags[0]), data)
                else:
                    # One message id on all its subjects: a node with several of the
                    # tags delivers it once.
                    for tag in push.tags:
                        await publish(self._tag_subject(tag), data)
                taken += count
        finally:
            del batch[:taken]

    async def _sync_tag_subscriptions(self, tags: set[str]) -> None:
        """Subscribe to the subjects of ``tags``; drop subscriptions of tags without
        local members. Flushed, so the server routes by them when this returns."""
        gone = [self._tag_subs.pop(t) for t in list(self._tag_subs) if t not in tags]
        for tag in tags - set(self._tag_subs):
            self._tag_subs[tag] = await self.nc.subscribe(self._tag_subject(tag), cb=self._on_push)
        for sub in gone:
            await sub.unsubscribe()
        await self.nc.flush(timeout=self.timeout)  # type: ignore[arg-type]  # annotated int

    # --- presence ----------------------------------------------------------------------

    async def _delete_if(self, kv: KeyValue, key: str, revision: int) -> bool:
        """Delete ``key`` unless it was written after ``revision`` (then False)."""
        try:
            await kv.delete(key, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except nats.js.errors.APIError as exc:
            # nats-py's delete raises a plain APIError for it, unlike update.
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            return False
        return True

    async def _get(self, kv: KeyValue, key: str) -> Any:
        try:
            return await kv.get(key)
        except MISSING:
            return None

    async def _read(self, kv: KeyValue, key: str) -> tuple[Any, int]:
        """The key's entry (None when absent or deleted) and the revision a
        compare-and-set write names: the entry's, a delete marker's, or 0. Writing
        over a delete marker with its revision is one round trip; ``create`` would
        fail first and read again."""
        try:
            entry = await kv.get(key)
        except MISSING as exc:
            return None, exc.entry.revision if exc.entry is not None else 0
        return entry, entry.revision or 0

    async def _node_tokens(self, nodes: set[int]) -> dict[int, str | None]:
        entries = await asyncio.gather(*(self._get(self.nodes_kv, f"n{n}") for n in nodes))
        return {
            n: None if e is None or not e.value else orjson.loads(e.value)["i"]
            for n, e in zip(nodes, entries, strict=True)
        }

    @staticmethod
    def _entries(entry: Any) -> list[dict[str, Any]]:
        """The connections stored in a presence entry (none if it is gone)."""
        return orjson.loads(entry.value) if entry is not None and entry.value else []

    async def _live(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``entries`` whose node lives (its node entry has their token)."""
        tokens = await self._node_tokens({e["n"] for e in entries})
        return [e for e in entries if tokens.get(e["n"]) == e["i"]]

    @staticmethod
    def _presence(user: str, v: dict[str, Any]) -> Presence:
        return Presence(user, v["n"], v["c"], tuple(v["g"]), v["t"], v.get("d", ""))

    async def _locate(self, users: list[str]) -> dict[str, list[Presence]]:
        self._check()
        got = await asyncio.gather(*(self._get(self.presence_kv, user_key(u)) for u in users))
        values = {u: self._entries(e) for u, e in zip(users, got, strict=True)}
        tokens = await self._node_tokens({v["n"] for vs in values.values() for v in vs})
        found = {}
        for user, vs in values.items():
            live = [self._presence(user, v) for v in vs if tokens.get(v["n"]) == v["i"]]
            if live:
                found[user] = live
        return found

    def _value(self, p: Presence) -> dict[str, Any]:
        return {
            "n": p.node_id, "i": self.token, "c": p.conn_id, "t": p.connected_at,
            "g": p.tags, "d": p.device,
        }  # fmt: skip

    async def _rewrite(
        self, user: str, change: Callable[[list[dict[str, Any]]], Any]
    ) -> list[dict[str, Any]] | None:
        """Compare-and-set the user's presence entries to what awaitable ``change``
        makes of them (None: leave them; an empty list deletes the key). Returns
        the entries it read, None when it left them."""
        key = user_key(user)
        while True:
            old, last = await self._read(self.presence_kv, key)
            entries = self._entries(old)
            new = await change(entries)
            if new is None:
                return None
            try:
                if not new:
                    if old is not None and not await self._delete_if(
                        self.presence_kv, key, old.revision
                    ):
                        continue
                else:
                    await self.presence_kv.update(key, orjson.dumps(new), last=last)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return entries

    async def _register(self, presence: Presence) -> tuple[list[Presence], set[int], bool]:
        self._check()
        if presence.tags:
            await self._sync_tag_subscriptions(set(self._tag_subs) | set(presence.tags))
        user, device, mine = presence.user_id, presence.device, self._value(presence)
        kept: list[dict[str, Any]] = []
        dropped: list[dict[str, Any]] = []

        async def add(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            # One connection per user: every entry makes room (live or not, as before).
            live = entries if self.per_user == 1 else await self._live(entries)
            kept[:] = [e for e in live if not (device and e.get("d") == device)]
            dropped[:] = [e for e in live if device and e.get("d") == device]
            while len(kept) >= self.per_user:
                dropped.append(kept.pop(0))
            return [*kept, mine]

        # compare-and-set, so of two simultaneous logins one sees the other
        await self._rewrite(user, add)
        # Read after our presence write: a node that dropped its presence entry
        # before we wrote ours had written its marker before that (``_hold``).
        key = user_key(user)
        holders: set[int] = set()
        held = await self._get(self.held_kv, key)
        if held is not None and held.value:
            holders = set(orjson.loads(held.value))
            if self.per_user == 1:
                await self._delete_if(self.held_kv, key, held.revision)
        return [self._presence(user, v) for v in dropped], holders, not kept

    async def _hold(self, user: str) -> None:
        self._check()
        key = user_key(user)
        while True:  # compare-and-set: two nodes may mark the same user at once
            old, last = await self._read(self.held_kv, key)
            nodes = set(orjson.loads(old.value)) if old is not None and old.value else set()
            value = orjson.dumps(sorted(nodes | {self.node_id}))
            try:
                await self.held_kv.update(key, value, last=last)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return

    def _is(self, presence: Presence) -> Callable[[dict[str, Any]], bool]:
        """Whether a stored entry is ``presence``'s login (this node, its connection)."""
        return lambda v: v["i"] == self.token and v["c"] == presence.conn_id

    async def _unregister(self, presence: Presence) -> None:
        self._check()
        mine = self._is(presence)

        async def drop(entries: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            left = [v for v in entries if not mine(v)]
            return None if len(left) == len(entries) else left

        await self._rewrite(presence.user_id, drop)

    async def _update(self, presence: Presence) -> None:
        self._check()
        mine, value = self._is(presence), self._value(presence)

        async def retag(entries: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            # Never revives an entry the disconnect dropped.
            if not any(mine(v) for v in entries):
                return None
            return [value if mine(v) else v for v in entries]

        await self._rewrite(presence.user_id, retag)

    async def _heartbeat(self) -> None:
        async with self.health.guard("heartbeat"):
            self._check()
            entry = await self._get(self.nodes_kv, f"n{self.node_id}")
            if entry is None or not entry.value:
                log.warning("nats broker: node %d entry was lost; registering again", self.node_id)
                self._resync = True
                await self._ensure_buckets()
            elif orjson.loads(entry.value)["i"] != self.token:
                log.error("nats broker: node id %d is used by another node", self.node_id)
        # The entry itself is written by _publish_state, which follows every heartbeat.

    async def _reregister(self) -> None:
        async with self.health.guard("re-register"):
            self._check()
            await self._ensure_buckets()
            local = self.node.local_users()
            for user, devices in local.items():
                ours = [self._value(p) for p in devices]

                async def merge(
                    entries: list[dict[str, Any]], ours: list[dict[str, Any]] = ours
                ) -> list[dict[str, Any]]:
                    others = [v for v in entries if v["i"] != self.token]
                    merged = sorted([*others, *ours], key=lambda v: float(v["t"]))
                    return merged[-self.per_user :]

                await self._rewrite(user, merge)
        log.info("nats broker: re-registered %d users", len(local))

    async def _publish_state(self) -> None:
        async with self.health.guard("publish state"):
            self._check()
            await self._sync_tag_subscriptions(set(self.local_tags()))
            await self.nodes_kv.put(f"n{self.node_id}", self._node_entry())

    # --- cluster-wide queries ----------------------------------------------------------

    async def _keys(self, name: str) -> list[str]:
        """The keys of bucket ``name``, from the stream's state, not
        ``KeyValue.keys()``: that one reads them through a consumer and stops at the
        first entry said to be the last (nothing pending). The server's pending count
        is not exact while entries are rewritten, so it missed keys (a wrong count) or
        waited for the next write to the bucket, past broker_timeout when it is quiet."""
        bucket = f"{self.prefix}_{name}"
        subjects = f"$KV.{bucket}."  # JetStream's naming of a KV bucket's stream
        info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=subjects + ">")
        return [subject[len(subjects) :] for subject in info.state.subjects or ()]

    async def _nodes(self) -> dict[int, dict[str, Any]]:
        """Node id -> its ``P_nodes`` entry, for every live node (key ``nN``)."""
        self._check()
        keys = await self._keys("nodes")
        entries = await asyncio.gather(*(self._get(self.nodes_kv, k) for k in keys))
        return {
            int(k[1:]): orjson.loads(e.value)
            for k, e in zip(keys, entries, strict=True)
            if e is not None and e.value
        }

    async def _counts(self) -> tuple[int, int]:
        # A user with connections on several nodes counts on each (docs/cluster.md).
        nodes = (await self._nodes()).values()
        return sum(n["c"] for n in nodes), sum(n.get("k", n["c"]) for n in nodes)

    async def distribution(self) -> dict[str, TagStat]:
        async with self.health.guard("distribution"):
            nodes = await self._nodes()
        return merge_distribution(
            {t: TagStat(t, number, created) for t, (number, created) in n["d"].items()}
            for n in nodes.values()
        )

    async def nodes(self) -> list[NodeStat]:
        async with self.health.guard("nodes"):
            nodes = await self._nodes()
        return [NodeStat(i, n["c"], n.get("k", n["c"])) for i, n in nodes.items()]

    # --- kept entries ------------------------------------------------------------------

    async def _change(
        self, user: str, change: Callable[[list[Entry]], list[Entry] | None]
    ) -> list[Entry]:
        """Rewrite the user's entries with ``change`` (None: leave them), compare-and-
        set; an empty list deletes the key. Returns the entries it read."""
        key = user_key(user)
        while True:
            old, last = await self._read(self.inbox_kv, key)
            entries = list(unpack_records(old.value)) if old is not None and old.value else []
            new = change(entries)
            if new is None or (not new and not entries):
                return entries
            try:
                if not new:
                    if not await self._delete_if(self.inbox_kv, key, old.revision):
                        continue
                else:
                    await self.inbox_kv.update(key, pack_records(new), last=last)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return entries

    async def _keep(self, users: list[str], entry: Entry, bounded: bool) -> list[str]:
        self._check()
        limit = self.nc.max_payload - 1024  # one value holds all of a user's entries
        kept: set[str] = set()

        def add(user: str) -> Callable[[list[Entry]], list[Entry] | None]:
            def change(entries: list[Entry]) -> list[Entry] | None:
                if any(e.sid == entry.sid for e in entries):
                    kept.add(user)
                    return None
                size = sum(RECORD.size + len(e.payload) for e in entries)
                size += RECORD.size + len(entry.payload)
                payload = size - RECORD.size * (len(entries) + 1)
                full = bounded and (
                    len(entries) >= self.inbox_max_messages or payload > self.inbox_max_bytes
                )
                if full or size > limit:
                    return None
                kept.add(user)
                return [*entries, entry]

            return change

        await gather_bounded([self._change(u, add(u)) for u in users])
        return [u for u in users if u in kept]

    async def _keep_many(self, requests: list[tuple[list[str], Entry, bool]]) -> list[list[str]]:
        # Concurrent: each user's entries are their own key (compare-and-set each).
        return await gather_bounded([self._keep(*request) for request in requests])

    async def _forget(self, batch: list[tuple[str, int]]) -> None:
        self._check()
        by_user: dict[str, set[int]] = {}
        for user, sid in batch:
            by_user.setdefault(user, set()).add(sid)

        def drop(sids: set[int]) -> Callable[[list[Entry]], list[Entry] | None]:
            def change(entries: list[Entry]) -> list[Entry] | None:
                left = [e for e in entries if e.sid not in sids]
                return None if len(left) == len(entries) else left

            return change

        await gather_bounded([self._change(u, drop(s)) for u, s in by_user.items()])

    async def _kept(self, user: str, horizon: int) -> list[Entry]:
        self._check()

        def extend(entries: list[Entry]) -> list[Entry] | None:
            if all(e.expires_ms >= horizon for e in entries):
                return None
            return [attrs.evolve(e, expires_ms=max(e.expires_ms, horizon)) for e in entries]

        return await self._change(user, extend)

    async def _sweep(self, now: int, limit: int) -> list[tuple[str, Entry]]:
        self._check()
        keys = sorted(await self._keys("inbox"))
        if len(keys) > SWEEP_READS:  # a window per round, so a round's cost is bounded
            start = self._sweep_from % len(keys)
            keys = (keys[start:] + keys[:start])[:SWEEP_READS]
            self._sweep_from = start + SWEEP_READS
        users = [user_of(k) for k in keys]
        values = await gather_bounded([self._get(self.inbox_kv, k) for k in keys])
        due = [
            u
            for u, v in zip(users, values, strict=True)
            if v is not None and v.value and _any_due(v.value, now)
        ][:limit]
        if not due:
            return []
        online = await self._locate(due)
        out: list[tuple[str, Entry]] = []

        def claim(user: str) -> Callable[[list[Entry]], list[Entry] | None]:
            def change(entries: list[Entry]) -> list[Entry] | None:
                claimed.pop(user, None)  # only the attempt that wrote counts
                gone = [e for e in entries if e.expires_ms <= now]
                if not gone:
                    return None
                claimed[user] = gone
                return [e for e in entries if e.expires_ms > now]

            return change

        claimed: dict[str, list[Entry]] = {}
        offline = [u for u in due if u not in online]
        await gather_bounded([self._change(u, claim(u)) for u in offline])
        for user in offline:  # the last successful compare-and-set's view
            out += ((user, e) for e in claimed.get(user, ()))
        return out

    # --- kept tag pushes -----------------------------------------------------------------

    async def _keep_for_tags(self, kept: TagKept, ttl_ms: int) -> None:
        self._check()
        item = orjson.loads(pack_tag_push(kept))
        limit = self.nc.max_payload - 1024

        async def add(tag: str) -> None:
            key = "t" + tag.encode().hex()
            while True:
                old, last = await self._read(self.tagbox_kv, key)
                items = orjson.loads(old.value) if old is not None and old.value else []
                items = [i for i in items if i["e"] > kept.at]
                items = [*items[len(items) + 1 - self.inbox_max_messages :], item]
                value = orjson.dumps(items)
                while len(value) > limit and len(items) > 1:  # the oldest go first
                    items = items[1:]
                    value = orjson.dumps(items)
                try:
                    await self.tagbox_kv.update(key, value, last=last)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
                return

        await asyncio.gather(*(add(t) for t in kept.tags))

    async def _owed(
        self, user: str, tags: tuple[str, ...], horizon: int
    ) -> tuple[list[Entry], float | None, list[TagKept]]:
        (entries, (seen, pushes)) = await asyncio.gather(
            self._kept(user, horizon), self._missed(user, tags)
        )
        return entries, seen, pushes

    async def _missed(self, user: str, tags: tuple[str, ...]) -> tuple[float | None, list[TagKept]]:
        self._check()
        if not tags:
            return None, []
        seen = await self._get(self.seen_kv, user_key(user))
        if seen is None or not seen.value:
            return None, []
        boxes = await asyncio.gather(
            *(self._get(self.tagbox_kv, "t" + t.encode().hex()) for t in tags)
        )
        values = [box.value for box in boxes if box is not None and box.value]
        return float(seen.value), [unpack_tag_push(i) for v in values for i in orjson.loads(v)]

    async def _saw(self, user: str, now: float) -> None:
        self._check()
        await self.seen_kv.put(user_key(user), repr(now).encode())

    async def _saw_many(self, seen: list[tuple[str, float]]) -> None:
        await gather_bounded([self._saw(user, at) for user, at in seen])
