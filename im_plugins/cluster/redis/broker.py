"""The Redis broker: presence and tag membership in Redis structures (see ``lua``),
pushes over pub/sub (one channel per node plus one for broadcasts), requests
answered on the asking node's channel."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from im_core.broker import LocalNode, NodeStat, Presence, TagKept
from im_core.errors import CloseCode
from im_core.tags import TagStat

from .. import wire
from ..base import ClusterBroker, grouped
from ..held import Item
from ..inbox import Entry, pack_tag_push, pack_value, unpack_tag_push, unpack_value
from ..options import without_secrets
from . import lua

log = logging.getLogger("im.redis")
CHUNK = 500
POOL_SIZE = 32


def login_of(p: Presence) -> str:
    """The start of a presence value that names the login (node and connection)."""
    return f"{p.node_id}|{p.conn_id}|"


def presence_value(p: Presence) -> str:
    tags = orjson.dumps(list(p.tags)).decode()
    return f"{login_of(p)}{p.connected_at!r}|{p.device.encode().hex()}|{tags}"


def parse_presence(user: str, value: bytes | str) -> Presence:
    text = value.decode() if isinstance(value, bytes) else value
    node, conn_id, at, device, tags = text.split("|", 4)
    tagged = tuple(orjson.loads(tags))
    return Presence(user, int(node), conn_id, tagged, float(at), bytes.fromhex(device).decode())


def parse_entries(user: str, value: bytes) -> list[Presence]:
    """A user's presence entries (one per line), oldest first."""
    return [parse_presence(user, line) for line in value.split(b"\n")]


class RedisBroker(ClusterBroker):
    name = "redis"
    errors = (RedisError, OSError)

    def __init__(
        self, options: dict[str, Any], node_id: int | None = None, hold_ttl: float = 70.0
    ) -> None:
        super().__init__(options, node_id, hold_ttl)
        self.url: str = str(options.get("redis_url") or "redis://127.0.0.1:6379/0")
        self.token = os.urandom(8).hex()  # this incarnation's lease value
        self._rids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[wire.Message]] = {}
        self._registered_tags: set[str] = set()
        self._pubsub: PubSub | None = None
        # user -> (when, what REGISTER read for them), until their connection asks
        # (``_owed``); an older read (a login that failed in between) is read again.
        self._owed_read: dict[
            str, tuple[float, tuple[list[Entry], float | None, list[TagKept]]]
        ] = {}

    def _client(self, socket_timeout: float | None) -> aioredis.Redis:
        # No client-side retries: an outage must surface at once as UNAVAILABLE. A
        # burst of logins waits (up to broker_timeout) for one of a bounded number
        # of connections instead of opening one each.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=POOL_SIZE,
            timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return aioredis.Redis.from_pool(pool)  # closes the pool with the client

    def _key(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    async def _script(self, script: Any, *args: object) -> Any:
        return await script(args=[self.prefix, *args])

    # --- lifecycle -----------------------------------------------------------------

    async def start(self, node: LocalNode) -> int:
        self.attach(node)
        self.redis = self._client(self.timeout)
        self.sub = self._client(None)
        r = self.redis
        self.s = {
            name: r.register_script(getattr(lua, name))
            for name in (
                "CLAIM",
                "PURGE",
                "BEAT",
                "REGISTER",
                "UNREGISTER",
                "RETAG",
                "LOCATE",
                "COUNT",
                "DISTRIBUTION",
                "NODES",
                "RESYNC",
                "KEEP",
                "FORGET",
                "OWED",
                "SWEEP",
            )
        }
        wanted = self.wanted_id
        ttl_ms = int(self.ttl * 1000)
        try:
            async with asyncio.timeout(self.timeout * 3):
                node_id = int(
                    await self._script(
                        self.s["CLAIM"], self.token, ttl_ms, -1 if wanted is None else wanted
                    )
                )
                if node_id < 0:
                    raise ConnectionError("redis broker: all 1024 node ids are taken")
                await self._script(self.s["PURGE"], node_id)  # leftovers of a dead predecessor
                self.node_id = node_id
                self._pubsub = await self._subscribe()
        except (RedisError, OSError, TimeoutError) as exc:
            await self._close_clients()
            # ConnectionError is an OSError: im-run reports it and exits with status 1.
            raise ConnectionError(f"redis broker: cannot use {self.url}: {exc}") from exc
        await self._open_links()
        self.health.up = True
        self.spawn(self._listen())
        self.spawn(self._keep_alive())
        self.spawn(self._sweeper())
        log.info(
            "redis broker: node %d joined cluster %r at %s",
            node_id,
            self.prefix,
            without_secrets(self.url),
        )
        return node_id

    async def stop(self) -> None:
        if not hasattr(self, "redis"):
            return  # it never started
        await self._cancel_tasks()
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.delete(self._key("node", self.node_id))
                await self._script(self.s["PURGE"], "*")
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis broker: could not leave the cluster cleanly: %s", exc)
        await self._close_clients()

    async def _close_clients(self) -> None:
        closing = [c.aclose() for c in (self._pubsub, self.redis, self.sub) if c is not None]
        self._pubsub = None
        for close in closing:
            try:
                async with asyncio.timeout(self.timeout):
                    await close
            except (RedisError, OSError, TimeoutError):
                pass

    # --- subscription ----------------------------------------------------------------

    async def _subscribe(self) -> PubSub:
        pubsub = self.sub.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._key("n", self.node_id), self._key("all"))
        return pubsub

    async def _listen(self) -> None:
        """Read peers' messages; after a lost connection re-subscribe with backoff and
        re-register this node's users (Redis may have restarted empty)."""
        delay = 0.05
        while not self._stopping:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._subscribe()
                    self._resync = True  # Redis may have restarted empty
                    self.recover()
                    delay = 0.05
                async for message in self._pubsub.listen():
                    if message["type"] == "message":
                        try:
                            await self._on_message(message["data"])
                        except (RedisError, OSError):
                            raise
                        except Exception:
                            log.exception("redis broker: bad message from a peer")
            except (RedisError, OSError) as exc:
                self.health.set(False, exc)
                pubsub, self._pubsub = self._pubsub, None
                if pubsub is not None:
                    try:
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                    except (RedisError, OSError):
                        pass
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _on_message(self, data: bytes) -> None:
        """A peer's message; ``ref`` is the request id a reply answers or a request
        wants its reply under (0: not a request)."""
        read = self.peer.read(data)
        if read is None:
            return
        origin, ref, message = read
        if isinstance(message, wire.REPLIES):
            future = self._waiting.pop(ref, None)
            if future is not None and not future.done():
                future.set_result(message)
            return
        answer = await self.peer.answer(origin, message, ref)
        if ref and answer is not None:
            self.spawn(self._notify(origin, wire.encode(answer, self.node_id, ref)))

    # --- transport ---------------------------------------------------------------------

    async def _request(self, node: int, message: wire.Request) -> wire.Message | None:
        rid = next(self._rids)
        future: asyncio.Future[wire.Message] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            data = wire.encode(message, self.node_id, rid)
            if not await self.redis.publish(self._key("n", node), data):
                return None  # nobody subscribed: the node is gone
            return await future
        finally:
            self._waiting.pop(rid, None)

    async def _notify(self, node: int, data: bytes) -> None:
        await self.redis.publish(self._key("n", node), data)

    async def _send_batch(self, batch: list[Item]) -> None:
        tagged = [push for push, _ in batch if push.kind != "all"]
        members: list[set[bytes]] = []
        if tagged:
            async with self.redis.pipeline(transaction=False) as pipe:
                for push in tagged:
                    keys = [self._key("tag", t) for t in push.tags]
                    if push.kind == "tags_all":
                        pipe.sinter(keys)
                    else:
                        pipe.sunion(keys)
                members = await pipe.execute()
        mine = str(self.node_id).encode()
        nodes = iter(members)
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, push, data in grouped(batch, self.node_id):
                if push.kind == "all":
                    pipe.publish(self._key("all"), data)
                    continue
                for n in next(nodes):
                    if n != mine:
                        pipe.publish(self._key("n", n.decode()), data)
            await pipe.execute()
        # Taken. A pipeline cut off by ``broker_timeout`` may still run (a stalled
        # Redis runs what it received when it resumes): sent again, its copies are
        # dropped by message id where the first arrived.
        batch.clear()

    # --- presence ----------------------------------------------------------------------

    async def _locate(self, users: list[str]) -> dict[str, list[Presence]]:
        found: dict[str, list[Presence]] = {}
        for i in range(0, len(users), CHUNK):
            chunk = users[i : i + CHUNK]
            values = await self._script(self.s["LOCATE"], *chunk)
            for user, value in zip(chunk, values, strict=True):
                if value is not None:
                    found[user] = parse_entries(user, value)
        return found

    async def _register(self, presence: Presence) -> tuple[list[Presence], set[int], bool]:
        user = presence.user_id
        dropped, held, owed, count = await self._script(
            self.s["REGISTER"],
            self.node_id,
            user,
            presence_value(presence),
            self.horizon(),
            self.per_user,
            presence.device.encode().hex(),
            *presence.tags,
        )
        # What the user is owed was read with the registration: ``_owed`` hands it
        # to the connection that asks next (one round trip per login, not two).
        self._owed_read[user] = (time.monotonic(), self._parse_owed(owed))
        replaced = [parse_presence(user, v) for v in dropped]
        return replaced, {int(n) for n in held}, int(count) == 1

    async def _hold(self, user: str) -> None:
        key = self._key("held", user)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, self.node_id)
            pipe.pexpire(key, int(self.hold_ttl * 1000))
            await pipe.execute()

    async def _unregister(self, presence: Presence) -> None:
        await self._script(
            self.s["UNREGISTER"],
            self.node_id,
            presence.user_id,
            login_of(presence),
            repr(time.time()),
            int(self.inbox_ttl * 1000),
        )

    async def _update(self, presence: Presence) -> None:
        await self._script(
            self.s["RETAG"], presence.user_id, login_of(presence), presence_value(presence)
        )

    async def _heartbeat(self) -> None:
        async with self.health.guard("heartbeat"):
            if self._pubsub is None:
                raise ConnectionError("not subscribed yet")  # healthy only once we listen
            state = await self._script(
                self.s["BEAT"], self.node_id, self.token, int(self.ttl * 1000)
            )
            if state == 2:
                log.warning("redis broker: node %d lease was lost; registering again", self.node_id)
                self._resync = True
            elif state == 0:
                log.error("redis broker: node id %d is used by another node", self.node_id)
            await self._script(self.s["PURGE"], "*")  # forget nodes whose lease expired

    async def _reregister(self) -> None:
        entries = [p for devices in self.node.local_users().values() for p in devices]
        self._registered_tags = set()
        lost: list[bytes] = []
        async with self.health.guard("re-register"):
            for i in range(0, max(len(entries), 1), CHUNK):
                args: list[object] = [self.node_id, self.per_user, "1" if i == 0 else "0"]
                for p in entries[i : i + CHUNK]:
                    args += [p.user_id, presence_value(p), repr(p.connected_at)]
                lost += await self._script(self.s["RESYNC"], *args)
        for user, conn_id in zip(lost[::2], lost[1::2], strict=True):
            self.node.kick_local(
                user.decode(), CloseCode.REPLACED, "replaced by a new login", conn_id.decode()
            )
        log.info("redis broker: re-registered %d connections", len(entries) - len(lost) // 2)

    async def _publish_state(self) -> None:
        tags = self.local_tags()
        added = set(tags) - self._registered_tags
        gone = self._registered_tags - set(tags)
        me = self.node_id
        async with self.health.guard("publish state"):
            async with self.redis.pipeline(transaction=True) as pipe:
                dist = self._key("dist", me)
                pipe.delete(dist)
                if tags:
                    pipe.hset(
                        dist, mapping={t: f"{s.number}|{s.created!r}" for t, s in tags.items()}
                    )
                for t in added:
                    pipe.sadd(self._key("tag", t), me)
                for t in gone:
                    pipe.srem(self._key("tag", t), me)
                if added:
                    pipe.sadd(self._key("tags", me), *added)
                if gone:
                    pipe.srem(self._key("tags", me), *gone)
                pipe.set(self._key("conns", me), self.node.local_connections())
                await pipe.execute()
        self._registered_tags = set(tags)

    # --- kept entries ------------------------------------------------------------------

    async def _keep(self, users: list[str], entry: Entry, bounded: bool) -> list[str]:
        value = pack_value(entry.kept_ms, entry.expires_ms, entry.tries, entry.payload)
        kept: list[str] = []
        for i in range(0, len(users), CHUNK):
            done = await self._script(
                self.s["KEEP"],
                entry.sid,
                entry.expires_ms,
                "1" if bounded else "0",
                self.inbox_max_messages,
                self.inbox_max_bytes,
                value,
                *users[i : i + CHUNK],
            )
            kept += (u.decode() for u in done)
        return kept

    async def _keep_many(self, requests: list[tuple[list[str], Entry, bool]]) -> list[list[str]]:
        # One pipeline for every push kept meanwhile (acked pushes in a stream).
        owner: list[int] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for i, (users, entry, bounded) in enumerate(requests):
                value = pack_value(entry.kept_ms, entry.expires_ms, entry.tries, entry.payload)
                for j in range(0, len(users), CHUNK):
                    args = [
                        self.prefix, entry.sid, entry.expires_ms, "1" if bounded else "0",
                        self.inbox_max_messages, self.inbox_max_bytes, value,
                        *users[j : j + CHUNK],
                    ]  # fmt: skip
                    await self.s["KEEP"](args=args, client=pipe)
                    owner.append(i)
            replies = await pipe.execute()
        kept: list[list[str]] = [[] for _ in requests]
        for i, reply in zip(owner, replies, strict=True):
            kept[i] += (u.decode() for u in reply)
        return kept

    async def _forget(self, batch: list[tuple[str, int]]) -> None:
        for i in range(0, len(batch), CHUNK):
            pairs = batch[i : i + CHUNK]
            await self._script(self.s["FORGET"], *(x for pair in pairs for x in pair))

    async def _owed(
        self, user: str, tags: tuple[str, ...], horizon: int
    ) -> tuple[list[Entry], float | None, list[TagKept]]:
        read = self._owed_read.pop(user, None)
        if read is not None and time.monotonic() - read[0] < self.timeout:
            return read[1]  # read with this login's registration just now
        return self._parse_owed(await self._script(self.s["OWED"], user, horizon, *tags))

    @staticmethod
    def _parse_owed(reply: list[Any]) -> tuple[list[Entry], float | None, list[TagKept]]:
        flat, seen, pushes = reply
        pairs = zip(flat[::2], flat[1::2], strict=True)
        entries = [unpack_value(int(sid), value) for sid, value in pairs]
        if not seen:
            return entries, None, []
        return entries, float(seen), [unpack_tag_push(v) for v in pushes]

    async def _keep_for_tags(self, kept: TagKept, ttl_ms: int) -> None:
        value = pack_tag_push(kept)
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in kept.tags:
                key = self._key("tagbox", tag)
                pipe.rpush(key, value)
                pipe.ltrim(key, -self.inbox_max_messages, -1)
                pipe.pexpire(key, ttl_ms)
            await pipe.execute()

    async def _saw(self, user: str, now: float) -> None:
        pass  # written by UNREGISTER, in the same round trip

    async def _saw_many(self, seen: list[tuple[str, float]]) -> None:
        ttl = int(self.inbox_ttl * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for user, at in seen:
                pipe.set(self._key("seen", user), repr(at), px=ttl)
            await pipe.execute()

    async def _sweep(self, now: int, limit: int) -> list[tuple[str, Entry]]:
        recheck = int(self.ttl * 1000)
        flat = await self._script(self.s["SWEEP"], now, limit, recheck)
        return [
            (user.decode(), unpack_value(int(sid), value))
            for user, sid, value in zip(flat[::3], flat[1::3], flat[2::3], strict=True)
        ]

    # --- cluster-wide queries ----------------------------------------------------------

    async def _counts(self) -> tuple[int, int]:
        users, conns = await self._script(self.s["COUNT"], self.per_user)
        return int(users), int(conns)

    async def distribution(self) -> dict[str, TagStat]:
        async with self.health.guard("distribution"):
            flat = await self._script(self.s["DISTRIBUTION"])
        out: dict[str, TagStat] = {}
        for raw_tag, raw in zip(flat[::2], flat[1::2], strict=True):
            tag = raw_tag.decode()
            number, created = raw.decode().split("|")
            seen = out.get(tag)
            n, c = int(number), float(created)
            if seen is not None:
                n, c = n + seen.number, min(c, seen.created)
            out[tag] = TagStat(tag, n, c)
        return out

    async def nodes(self) -> list[NodeStat]:
        async with self.health.guard("nodes"):
            flat = await self._script(self.s["NODES"])
        triples = zip(flat[::3], flat[1::3], flat[2::3], strict=True)
        return [NodeStat(int(n), int(users), int(conns)) for n, users, conns in triples]
