"""Random sequences of logins, retags, disconnects and node kills on a two-node
cluster: after every step each live node agrees with a model of who is online,
on which node, with which tags, in presence, the online count, the tag
distribution and what user and tag pushes reach.

Node A is an in-process ``Server`` (asked directly); node B runs in its own
process (asked through its HTTP push API) so that it can be killed with SIGKILL
and started again. A step is a kill or a restart of B, or one to three
operations on distinct users run at once (their outcomes do not depend on their
order), sometimes followed at once by a kill of B. Each sequence is drawn from a
``random.Random`` seeded with the broker and a seed; a failure names both, and
``IM_TEST_SEEDS=7,8`` runs other sequences.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Awaitable, Sequence
from typing import NoReturn, Protocol

import aiohttp
import attrs
import pytest

from im_client import Client, Closed
from im_core import Server
from im_core.errors import CloseCode
from im_core.options import flag
from im_plugins.cluster.options import ClusterOptions, NatsOptions, RedisOptions

from .api_clients import ApiError, HttpApi
from .cluster import NodeProcess
from .conftest import eventually, ws_url
from .test_cluster import Node, node, nothing_more

__all__ = ["node"]  # the fixture, parametrized over the brokers

USERS = tuple(f"u{i}" for i in range(5))
TAGS = ("red", "green", "blue")
STEPS = 48
MAX_KILLS = 3  # each costs about the presence TTL and a process start
SEEDS = [int(s) for s in os.environ.get("IM_TEST_SEEDS", "").split(",") if s] or [1]

CLUSTER_OPTIONS = {
    f.name for c in (ClusterOptions, RedisOptions, NatsOptions) for f in attrs.fields(c)
}

#: What a presence call reports: online, node id, tags. Offline: no real node id.
Seen = tuple[bool, int, tuple[str, ...]]
OFFLINE: Seen = (False, -1, ())


class View(Protocol):
    """One node as a caller of its push API sees it."""

    name: str
    node_id: int
    url: str

    async def presence(self, user: str) -> Seen: ...
    async def online(self) -> int: ...
    async def distribution(self) -> dict[str, int]: ...
    async def push(self, users: Sequence[str], data: bytes) -> list[str]: ...
    async def push_tags(self, tags: Sequence[str], data: bytes, match: str) -> None: ...
    async def retag(self, user: str, add: Sequence[str], remove: Sequence[str]) -> bool: ...


class Here:
    """Node A: the in-process server."""

    name = "a"

    def __init__(self, server: Server) -> None:
        self.server = server
        self.node_id = server.node_id
        self.url = ws_url(server)

    async def presence(self, user: str) -> Seen:
        found = await self.server.presence(user)  # None when offline
        return OFFLINE if found is None else (True, found.node_id, found.tags)

    async def online(self) -> int:
        return await self.server.online_count()

    async def distribution(self) -> dict[str, int]:
        return {t: s.number for t, s in (await self.server.distribution()).items()}

    async def push(self, users: Sequence[str], data: bytes) -> list[str]:
        return list((await self.server.push(users, data)).missing)

    async def push_tags(self, tags: Sequence[str], data: bytes, match: str) -> None:
        self.server.push_tags(tags, data, match=match)

    async def retag(self, user: str, add: Sequence[str], remove: Sequence[str]) -> bool:
        return await self.server.retag(user, add, remove)


class There:
    """Node B: an ``im-run`` process, asked through its HTTP push API."""

    name = "b"

    def __init__(self, proc: NodeProcess, node_id: int, session: aiohttp.ClientSession) -> None:
        self.proc = proc
        self.node_id = node_id
        self.url = proc.ws_url
        self.api = HttpApi(session, f"http://127.0.0.1:{proc.port}")

    async def presence(self, user: str) -> Seen:
        found = await self.api.call("Presence", user=user)  # offline: node_id -1
        return found["online"], found["node_id"], tuple(found["tags"])

    async def online(self) -> int:
        return int((await self.api.call("Stats"))["online"])

    async def distribution(self) -> dict[str, int]:
        return {t["tag"]: t["number"] for t in (await self.api.call("Distribution"))["tags"]}

    async def push(self, users: Sequence[str], data: bytes) -> list[str]:
        return list((await self.api.call("PushUsers", users=list(users), data=data))["missing"])

    async def push_tags(self, tags: Sequence[str], data: bytes, match: str) -> None:
        await self.api.call("PushTags", tags=list(tags), data=data, match=match)

    async def retag(self, user: str, add: Sequence[str], remove: Sequence[str]) -> bool:
        try:
            await self.api.call("Retag", user=user, add=list(add), remove=list(remove))
        except ApiError as exc:
            if exc.status == 404:  # not online
                return False
            raise
        return True


@attrs.define
class Login:
    node: str
    tags: frozenset[str]
    client: Client
    changed: int  # the last push round before this login connected or was retagged
    seen: set[bytes] = attrs.Factory(set)  # every push it got


def matches(tags: frozenset[str], pushed: Sequence[str], match: str) -> bool:
    return bool(tags & set(pushed)) if match == "any" else set(pushed) <= tags


class Run:
    """One random sequence against node A and a killable node B."""

    def __init__(self, seed: int, a: Server, session: aiohttp.ClientSession) -> None:
        self.seed = seed
        self.broker = a.options.broker
        self.rng = random.Random(f"{self.broker}:{seed}")  # one sequence per broker
        self.a = Here(a)
        self.b: There | None = None
        self.session = session
        # Node B runs with node A's cluster options (broker, prefix, presence TTL).
        self.args = ["--broker", self.broker, "--log-level", "WARNING"]
        for name, value in a.options.plugin.items():
            if name in CLUSTER_OPTIONS:  # not A's ports
                self.args += [flag(name), str(value)]
        ttl = float(a.options.plugin["presence_ttl"])
        # A killed node's users drop out within the TTL (nothing renews its entry);
        # the rest is slack for a loaded machine.
        self.deadline = ttl + 3.0
        self.model: dict[str, Login] = {}
        self.clients: list[Client] = []
        self.procs: list[NodeProcess] = []
        self.steps: list[str] = []
        self.kills = 0
        self.rounds = 0

    # --- reporting -----------------------------------------------------------------------

    def failure(self, what: str) -> AssertionError:
        steps = "\n  ".join(self.steps)
        return AssertionError(
            f"{self.broker}, seed {self.seed} (IM_TEST_SEEDS={self.seed}): {what}\n"
            f"steps:\n  {steps}"
        )

    def fail(self, what: str) -> NoReturn:
        raise self.failure(what)

    # --- nodes ---------------------------------------------------------------------------

    def views(self) -> list[View]:
        return [self.a] if self.b is None else [self.a, self.b]

    def view(self, name: str) -> View:
        view = self.a if name == "a" else self.b
        assert view is not None
        return view

    async def start_b(self) -> None:
        proc = NodeProcess(self.args)
        self.procs.append(proc)
        info = await proc.ready()
        self.b = There(proc, int(info["node"]), self.session)

    async def kill_b(self, step: str) -> None:
        assert self.b is not None
        gone = [self.model.pop(u) for u, login in list(self.model.items()) if login.node == "b"]
        self.steps.append(f"{step} (holding {len(gone)} users)")
        self.kills += 1
        self.b.proc.kill()  # SIGKILL: no goodbye to the broker
        self.b = None
        for login in gone:  # their sockets died with the process
            await login.client.wait_closed(timeout=self.deadline)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        for proc in self.procs:
            proc.kill()

    # --- steps ----------------------------------------------------------------------------
    # The model changes as an operation is drawn; what runs it comes after.

    async def step(self, index: int) -> None:
        """Restart B, kill B, or run one to three operations on distinct users at
        once, sometimes killing B right after them (before anything checked that
        they took effect)."""
        rng = self.rng
        if self.b is None and rng.random() < 0.5:
            self.steps.append(f"{index}: restart b")
            await self.start_b()
            return
        if self.may_kill() and (rng.random() < 0.15 or (not self.kills and index >= STEPS // 2)):
            await self.kill_b(f"{index}: kill b")
            return
        users = rng.sample(USERS, rng.choice((1, 1, 2, 3)))
        await asyncio.gather(*[self.operation(index, user) for user in users])
        if self.may_kill() and rng.random() < 0.1:
            await self.kill_b(f"{index}: then kill b")

    def may_kill(self) -> bool:
        """B is up, holds users, and the kills of this sequence are not used up."""
        return self.kills < MAX_KILLS and any(login.node == "b" for login in self.model.values())

    def operation(self, index: int, user: str) -> Awaitable[None]:
        rng = self.rng
        nodes = [v.name for v in self.views()]
        login = self.model.get(user)
        if login is None:
            kind = rng.choices(("connect", "retag"), (4, 1))[0]
        else:
            kind = rng.choices(("connect", "retag", "disconnect"), (2, 3, 2))[0]
        where = rng.choice(nodes)
        if kind == "connect":
            tags = frozenset(rng.sample(TAGS, rng.randint(0, 2)))
            self.steps.append(f"{index}: connect {user} to {where} with {sorted(tags)}")
            client = Client(self.view(where).url, user, tags=sorted(tags), heartbeat=None)
            self.clients.append(client)
            self.model[user] = Login(where, tags, client, self.rounds)
            return self.connect(user, client, login)
        if kind == "disconnect":
            assert login is not None
            self.steps.append(f"{index}: disconnect {user}")
            del self.model[user]
            return login.client.close()
        add = rng.sample(TAGS, rng.randint(0, 2))
        remove = rng.sample(TAGS, rng.randint(0 if add else 1, 2))
        self.steps.append(f"{index}: retag {user} via {where} +{add} -{remove}")
        if login is not None:  # the server removes, then adds
            login.tags = (login.tags - set(remove)) | set(add)
            login.changed = self.rounds
        return self.retag(where, user, add, remove, online=login is not None)

    async def connect(self, user: str, client: Client, replaced: Login | None) -> None:
        await client.connect()
        if replaced is not None:
            code = await replaced.client.wait_closed(timeout=self.deadline)
            if code != CloseCode.REPLACED:
                self.fail(f"{user}'s older login closed with {code}, not {CloseCode.REPLACED}")

    async def retag(
        self, where: str, user: str, add: list[str], remove: list[str], *, online: bool
    ) -> None:
        done = await self.view(where).retag(user, add, remove)
        if done != online:
            self.fail(f"retag of {user} via {where} returned {done}, want {online}")

    # --- checks ------------------------------------------------------------------------

    def expected(self, user: str) -> Seen:
        login = self.model.get(user)
        if login is None:
            return OFFLINE
        return True, self.view(login.node).node_id, tuple(sorted(login.tags))

    async def check(self) -> None:
        """Every live node agrees with the model (within the deadline), then pushes
        through each reach exactly whom the model says."""
        views = self.views()
        want = {u: self.expected(u) for u in USERS}
        count = len(self.model)
        dist = dict(Counter(t for login in self.model.values() for t in login.tags))
        problems: list[str] = []

        async def agrees() -> bool:
            problems.clear()
            for view in views:
                seen = await asyncio.gather(*(view.presence(u) for u in USERS))
                for user, got in zip(USERS, seen, strict=True):
                    if got != want[user]:
                        problems.append(f"{view.name}: presence({user}) {got}, want {want[user]}")
                if (n := await view.online()) != count:
                    problems.append(f"{view.name}: online count {n}, want {count}")
                if (d := await view.distribution()) != dist:
                    problems.append(f"{view.name}: distribution {d}, want {dist}")
            return not problems

        try:
            await eventually(agrees, timeout=self.deadline)
        except AssertionError:
            self.fail(f"not agreed within {self.deadline:.1f}s: {'; '.join(problems)}")
        await self.check_pushes(views)

    async def check_pushes(self, views: list[View]) -> None:
        self.rounds += 1
        rng = self.rng
        offline = sorted(set(USERS) - set(self.model))
        want: dict[str, set[bytes]] = {user: set() for user in self.model}
        for view in views:
            data = f"{self.rounds}:{view.name}:users".encode()
            missing = await view.push(USERS, data)
            if sorted(missing) != offline:
                self.fail(f"push to all via {view.name}: missing {missing}, want {offline}")
            for payloads in want.values():
                payloads.add(data)
            tags = rng.sample(TAGS, rng.randint(1, 2))
            match = rng.choice(("any", "all"))
            data = f"{self.rounds}:{view.name}:{match}:{','.join(tags)}".encode()
            await view.push_tags(tags, data, match)
            for user, login in self.model.items():
                if matches(login.tags, tags, match):
                    want[user].add(data)
        await asyncio.gather(*(self.receive(u, self.model[u], p) for u, p in want.items()))

    async def receive(self, user: str, login: Login, payloads: set[bytes]) -> None:
        """``login`` gets each of ``payloads`` once, and nothing else meanwhile (a
        stray push that comes later shows up in a later round)."""
        got: set[bytes] = set()
        while got != payloads:
            try:
                msg = await login.client.receive(timeout=self.deadline)
            except (TimeoutError, Closed) as exc:
                self.fail(f"{user} got {sorted(got)}, not {sorted(payloads - got)} ({exc!r})")
            if msg.data in login.seen:
                self.fail(f"{user} got {msg.data!r} twice")
            login.seen.add(msg.data)
            if msg.data in payloads:
                got.add(msg.data)
            elif not self.late(login, msg.data):
                self.fail(f"{user} got {msg.data!r}, want only {sorted(payloads - got)}")

    def late(self, login: Login, data: bytes) -> bool:
        """Whether ``data`` is a tag push of the previous round that was still on its
        way when ``login`` connected or was retagged to match it: a tag push goes to
        whoever matches when it arrives, and that round did not wait for it here."""
        pushed_in, _, kind, *tags = data.decode().split(":")
        return (
            kind != "users"
            and int(pushed_in) == login.changed == self.rounds - 1
            and matches(login.tags, tags[0].split(","), kind)
        )

    async def run(self) -> None:
        try:
            await self.start_b()
            await self.check()
            for index in range(STEPS):
                await self.step(index)
                await self.check()
        except AssertionError:
            raise
        except Exception as exc:  # an API call failed: say where in which sequence
            raise self.failure(repr(exc)) from exc
        await asyncio.gather(*(nothing_more(login.client) for login in self.model.values()))


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_sequences_agree_on_every_node(
    node: Node, session: aiohttp.ClientSession, seed: int
) -> None:
    run = Run(seed, await node(), session)
    try:
        await run.run()
    finally:
        await run.close()
