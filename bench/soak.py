"""Mixed delivery soak: one im, identical load cycles, every push accounted for.

    python -m bench soak                           # 2 cycles of ~85 s, HTTP push API
    python -m bench soak --api grpc --population 1000 --load-seconds 20

One server (``im_core.cli``, in-memory broker) with ``--ack-interval 1
--ack-max-tries 3 --ack-keep-offline 5``, so every receipt a client never sends
expires within a cycle. One ack event stream (``GET /api/v1/ack_events``) is read
for the whole run. Each cycle, with the same random seed:

    connect  --population users (``u{i}``, tag ``g{i % --groups}``) over WebSocket;
             every --never-ack-every'th user never acks, the others ack each sid
    load     --load-seconds of, all at once, through --api (HTTP or gRPC):
               unicast    --unicast-rate pushes/s to random users, every other one
                          with ack=true (push_user / PushUser)
               tag        --tag-rate pushes/s to one random group tag (push_tags)
               broadcast  --broadcast-rate pushes/s (broadcast)
               churn      --churn-rate users/s close (close frame, then read until
                          the server's close) and reconnect 0.1-2 s later; every
                          --pending-churn-every'th takes a never-acker with a
                          receipt pending, every other of those stays away past
                          --ack-keep-offline (re-sent on return / expired offline)
               second     --second-login-rate users/s log in again while connected;
                          im closes the older connection with 4501 (expected)
    drain    --drain-seconds for pushes in flight and redeliveries
    close    every client closes the same way as a churn close
    settle   --settle-seconds idle (receipts of offline users expire), then the
             server's RSS (VmRSS) and stats; the push accounting runs here

Accounting. A connection's times, on this process's clock: opened (connect
started), ready (its 101 read), ended (the server's close frame or EOF read; for
a churn close, after our close frame). "Stayed" means still open when the load
and drain ended. Because the server writes every frame it accepted for a socket
before that socket's close frame, a connection whose end was read before a push
was sent cannot have been that push's target.

- unicast, no ack, answered delivered (200 / OK): received if any connection of
  the user got it; else excused if a connection of the user opened before the
  answer ended at or after the send (a churn close or a 4501 replacement may drop
  an unacked push); else **lost**.
- unicast, ack=true, answered delivered: received (by any connection of the user,
  at least once; re-sends are counted, not double-counted) or reported
  ``expired`` on the ack event stream; else **lost**. Each such sid must also get
  exactly one outcome: none, two, ``acked`` from a user that never acks, or
  ``acked`` without the harness having received it are anomalies.
- unicast answered missing (404 / NOT_FOUND): nothing owed, but a user with a
  connection ready before the send that stayed open should have been reached:
  counted as the anomaly "missing while connected".
- tag push / broadcast (answered queued, no delivery report): owed to every
  connection of a matching user that was ready before the request was sent and
  stayed; each such (push, connection) not received is **lost**. One that ended
  after the send without it is excused.
- a frame for another user or another group is "misrouted", one whose push the
  harness did not send "stray"; both are anomalies.
- a unicast push whose call failed (an API error) is owed nothing; if it arrived
  anyway it is counted as "error, received anyway".

"Ready before the send" means registered: im's front protocol registers a socket
(user and tags) in the same event-loop step that writes its 101, before it awaits
anything, so a 101 this process has read was preceded by the registration.

Targets: no loss in any cycle; server RSS after cycle 2's settle within 10 % of
RSS after cycle 1's.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shlex
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import grpc
import orjson

from im_client.wire import JsonWire
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

from .abuse import Busy, Sampler, quantile
from .acks import read_ack_events
from .loadgen import WsClient, client_frame, source_addresses, upgrade_request
from .servers import HOST, IM, LOADGEN_CPU, ROOT, Running, running
from .unicast import HttpPool, paced

WIRE = JsonWire()
OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8
CLIENT_CLOSE = client_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
UPGRADE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0  # for the server's answer to our close frame
CONNECT_CONCURRENCY = 64
PUSH_CONNECTIONS = 16  # keep-alive HTTP connections the backend pushes on
PAYLOAD = 64
RSS_GROWTH_MAX = 1.10
RECONNECT_DELAY = (0.1, 2.0)  # s a churned user stays away, well under keep-offline
KINDS = {"u": "unicast", "a": "unicast_ack", "t": "tag", "b": "broadcast"}
LOST_KEPT = 20  # lost pushes listed in the result, per cycle
LATE = 0.1  # s: unicast pushes slower than this are listed, up to LATE_KEPT
LATE_KEPT = 200


@dataclass(slots=True)
class Push:
    pid: int
    kind: str  # a key of KINDS
    target: str  # user (u, a), tag (t), "" (b)
    sent: float
    answered: float = 0.0
    status: str = ""  # delivered, missing, queued or error
    sid: int = 0

    def data(self) -> bytes:
        return f"{self.kind}{self.pid} ".encode().ljust(PAYLOAD, b"x")


@dataclass(eq=False, slots=True)
class User:
    name: str
    tag: str
    acker: bool
    conns: list[Client] = field(default_factory=list)
    got: set[int] = field(default_factory=set)  # unicast pids, by any connection
    busy: bool = False  # a churn or second login is under way

    def live(self) -> Client | None:
        """The newest connection if it is upgraded and open."""
        c = self.conns[-1] if self.conns else None
        return c if c is not None and c.ready and c.open else None


class Client(WsClient):
    """One connection of a user: notes the pushes that arrive, acks if its user does."""

    def __init__(self, request: bytes, user: User, cycle: Cycle) -> None:
        super().__init__(request)
        self.user, self.cycle = user, cycle
        self.ready = 0.0
        self.got: set[int] = set()  # tag and broadcast pids
        self.closing = False  # the harness sent its close frame
        self.stayed = False  # open when the load and drain ended

    def on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode not in (OP_TEXT, OP_BINARY):
            return
        sid, msg = WIRE.decode_push(payload)
        self.cycle.received(self, msg, time.monotonic())
        if sid and self.user.acker and not self.closing and self.transport is not None:
            self.transport.write(client_frame(OP_TEXT, WIRE.encode_client(acks=(sid,))))

    def end(self, outcome: str) -> None:
        answer = self.open and outcome.startswith("close") and not self.closing
        super().end(outcome)
        if answer and self.transport is not None:  # a 4501: answer it as a client should
            code = int(outcome.split()[1])
            self.transport.write(client_frame(OP_CLOSE, code.to_bytes(2, "big")))
            self.transport.close()


class Api(Protocol):
    async def push_user(self, user: str, data: bytes, ack: bool) -> int | None:
        """The sid (0 without ack) if the user was reached, None if not."""
        ...

    async def push_tag(self, tag: str, data: bytes) -> None: ...
    async def broadcast(self, data: bytes) -> None: ...
    async def close(self) -> None: ...


class HttpApi:
    """``/api/v1`` on PUSH_CONNECTIONS keep-alive connections."""

    def __init__(self, server: Running) -> None:
        self.pool = HttpPool(server.base, PUSH_CONNECTIONS)

    async def push_user(self, user: str, data: bytes, ack: bool) -> int | None:
        body = orjson.dumps({"user": user, "text": data.decode(), "ack": ack})
        status, reply = await self.pool.call("push_user", body)
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"push_user: {status} {reply[:200]!r}")
        return int(orjson.loads(reply)["sid"])

    async def push_tag(self, tag: str, data: bytes) -> None:
        await self.pool.post("push_tags", orjson.dumps({"tags": [tag], "text": data.decode()}))

    async def broadcast(self, data: bytes) -> None:
        await self.pool.post("broadcast", orjson.dumps({"text": data.decode()}))

    async def close(self) -> None:
        self.pool.close()


class GrpcApi:
    """``im.v1.Im`` unary calls on one channel."""

    def __init__(self, server: Running) -> None:
        self.channel = grpc.aio.insecure_channel(f"{HOST}:{server.rpc_port}")
        self.stub = im_v1_pb2_grpc.ImStub(self.channel)

    async def push_user(self, user: str, data: bytes, ack: bool) -> int | None:
        try:
            reply = await self.stub.PushUser(pb.PushUserRequest(user=user, data=data, ack=ack))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return int(reply.sid)

    async def push_tag(self, tag: str, data: bytes) -> None:
        await self.stub.PushTags(pb.PushTagsRequest(tags=[tag], data=data))

    async def broadcast(self, data: bytes) -> None:
        await self.stub.Broadcast(pb.BroadcastRequest(data=data))

    async def close(self) -> None:
        await self.channel.close()


class Outcomes:
    """The ack event stream, read for the whole run: outcomes by sid."""

    def __init__(self) -> None:
        self.by_sid: dict[int, list[dict[str, Any]]] = {}
        self.errors: list[dict[str, Any]] = []

    def on_event(self, obj: dict[str, Any]) -> None:
        if "outcome" in obj:
            self.by_sid.setdefault(int(obj["sid"]), []).append(obj)
        else:  # {"error": ...}: the stream fell behind and ended
            self.errors.append(obj)


class Cycle:
    """One load cycle: its users, connections, pushes and the accounting."""

    pids = itertools.count(1)  # unique over the run: a frame names its push

    def __init__(
        self, number: int, server: Running, api: Api, outcomes: Outcomes, args: argparse.Namespace
    ) -> None:
        self.number = number
        self.server, self.api, self.outcomes, self.args = server, api, outcomes, args
        self.rng = random.Random(args.seed)
        self.sources = source_addresses()
        self.users = [
            User(f"u{i}", f"g{i % args.groups}", i % args.never_ack_every != 0)
            for i in range(args.population)
        ]
        self.pushes: dict[int, Push] = {}
        self.first_rx: dict[int, float] = {}  # unicast pid -> first arrival
        self.pending: deque[User] = deque(maxlen=100)  # never-ackers just sent an ack push
        self.anomalies: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.upgrades = self.connect_failures = self.close_timeouts = 0
        self.second_logins = self.resends = 0
        self.skipped: Counter[str] = Counter()  # churn / second login found no idle user

    # -- clients ------------------------------------------------------------------------

    async def connect(self, user: User) -> bool:
        port = self.server.port
        path = f"/conn?token={user.name}&tags={user.tag}"
        client = Client(upgrade_request(HOST, port, path), user, self)
        user.conns.append(client)
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: client, HOST, port, local_addr=(next(self.sources), 0)
            )
            ok = await asyncio.wait_for(asyncio.shield(client.upgraded), UPGRADE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            client.end(f"connect {type(exc).__name__}")
            client.abort()
            ok = False
        if not ok:
            self.connect_failures += 1
            return False
        client.ready = time.monotonic()
        self.upgrades += 1
        return True

    async def close(self, client: Client) -> None:
        """Close frame, then read until the server's close: what it sent first arrives."""
        if client.open and client.transport is not None:
            client.closing = True
            client.transport.write(CLIENT_CLOSE)
            try:
                await asyncio.wait_for(asyncio.shield(client.done), CLOSE_TIMEOUT)
            except TimeoutError:
                self.close_timeouts += 1
        client.abort()

    def received(self, client: Client, msg: bytes, now: float) -> None:
        try:
            head = msg.split(b" ", 1)[0]
            push = self.pushes.get(int(head[1:]))
        except ValueError:
            push = None
        if push is None or push.kind != chr(head[0]):
            self.anomalies["stray"] += 1
            return
        user = client.user
        if push.kind in "ua":
            if push.target != user.name:
                self.anomalies["misrouted"] += 1
            elif push.pid in user.got:
                self.resends += 1  # an unacked push sent again: idempotent on sid
            else:
                user.got.add(push.pid)
                self.first_rx[push.pid] = now
        elif push.kind == "t" and push.target != user.tag:
            self.anomalies["misrouted"] += 1
        elif push.pid in client.got:
            self.anomalies["queue push twice on one connection"] += 1
        else:
            client.got.add(push.pid)

    def pick(self) -> User | None:
        """A random user with an open connection and nothing under way."""
        for _ in range(20):
            user = self.rng.choice(self.users)
            if not user.busy and user.live() is not None:
                return user
        return None

    # -- load ----------------------------------------------------------------------------

    def new_push(self, kind: str, target: str) -> Push:
        push = Push(next(self.pids), kind, target, time.monotonic())
        self.pushes[push.pid] = push
        return push

    async def call(self, push: Push, call: Callable[[], Awaitable[str]]) -> None:
        try:
            push.status = await call()
        except Exception as exc:
            push.status = "error"
            self.errors[f"{KINDS[push.kind]}: {type(exc).__name__}: {exc}"[:160]] += 1
        push.answered = time.monotonic()

    async def push_unicast(self, i: int) -> None:
        user = self.rng.choice(self.users)
        ack = i % 2 == 1
        push = self.new_push("a" if ack else "u", user.name)

        async def call() -> str:
            sid = await self.api.push_user(user.name, push.data(), ack)
            push.sid = sid or 0
            if sid and not user.acker:
                self.pending.append(user)
            return "missing" if sid is None else "delivered"

        await self.call(push, call)

    async def push_tag(self, i: int) -> None:
        push = self.new_push("t", f"g{self.rng.randrange(self.args.groups)}")

        async def call() -> str:
            await self.api.push_tag(push.target, push.data())
            return "queued"

        await self.call(push, call)

    async def push_broadcast(self, i: int) -> None:
        push = self.new_push("b", "")

        async def call() -> str:
            await self.api.broadcast(push.data())
            return "queued"

        await self.call(push, call)

    async def churn(self, i: int) -> None:
        """Close one user's connection and log them in again. Every
        --pending-churn-every'th takes a never-acker just sent an ack push (its
        receipt pending) and, every other time, keeps it away past
        --ack-keep-offline: receipts are re-sent on return, or expire "offline"."""
        every = self.args.pending_churn_every
        pending = bool(every) and i % every == every - 1
        user = self.pick_pending() if pending else self.pick()
        if user is None:
            self.skipped["churn"] += 1
            return
        away = self.rng.uniform(*RECONNECT_DELAY)
        if pending and (i // every) % 2:
            away = self.args.ack_keep_offline + 2 * self.args.ack_interval
        user.busy = True
        try:
            await self.close(user.conns[-1])
            await asyncio.sleep(away)
            await self.connect(user)
        finally:
            user.busy = False

    def pick_pending(self) -> User | None:
        """The never-acker most recently sent an ack push, if idle and connected."""
        while self.pending:
            user = self.pending.pop()
            if not user.busy and user.live() is not None:
                return user
        return None

    async def second_login(self, i: int) -> None:
        user = self.pick()
        if user is None:
            self.skipped["second login"] += 1
            return
        user.busy = True
        try:
            self.second_logins += 1
            await self.connect(user)  # im closes the older one with 4501
        finally:
            user.busy = False

    async def load(self) -> None:
        a = self.args
        streams = (
            (a.unicast_rate, self.push_unicast),
            (a.tag_rate, self.push_tag),
            (a.broadcast_rate, self.push_broadcast),
            (a.churn_rate, self.churn),
            (a.second_login_rate, self.second_login),
        )
        await asyncio.gather(
            *(paced(int(r * a.load_seconds), r, 1, fn) for r, fn in streams if r > 0)
        )

    async def bounded(self, fn: Callable[[Any], Awaitable[Any]], items: list[Any]) -> None:
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(item: Any) -> None:
            async with sem:
                await fn(item)

        await asyncio.gather(*(one(x) for x in items))

    # -- the cycle ---------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        a, server = self.args, self.server
        t0 = time.monotonic()
        await self.bounded(self.connect, self.users)
        connect_s = time.monotonic() - t0
        initial = self.upgrades
        sampler, busy = Sampler(server), Busy(server)
        t1 = time.monotonic()
        await self.load()
        load_s = time.monotonic() - t1
        during_load = self.upgrades - initial  # churn reconnects and second logins
        await asyncio.sleep(a.drain_seconds)
        load_busy = busy.read()
        still = [c for u in self.users for c in u.conns if c.open and c.is_upgraded]
        for c in still:
            c.stayed = True
        await self.bounded(self.close, still)
        await asyncio.sleep(a.settle_seconds)
        result = {
            "cycle": self.number,
            "seconds": {"connect": round(connect_s, 1), "load": round(load_s, 1)},
            "connects_per_s_population": round(initial / connect_s, 1),
            "connects_during_load": during_load,
            "connects_per_s_load": round(during_load / load_s, 1),
            "connects": self.upgrades,
            "connect_failures": self.connect_failures,
            "second_logins": self.second_logins,
            "skipped": dict(self.skipped),
            **load_busy,
            **sampler.stop(),
            "rss_mb": round(server.rss_kb() / 1024, 1),
            "stats": await server_stats(server),
            **self.account(),
        }
        return result

    # -- accounting ----------------------------------------------------------------------

    def account(self) -> dict[str, Any]:
        by_name = {u.name: u for u in self.users}
        by_tag: dict[str, list[User]] = {}
        for u in self.users:
            by_tag.setdefault(u.tag, []).append(u)
        verdicts: dict[str, Counter[str]] = {k: Counter() for k in KINDS.values()}
        lost: list[dict[str, Any]] = []
        unseen: list[dict[str, Any]] = []  # unicast expired or excused, never received
        outcomes: Counter[str] = Counter()
        for push in self.pushes.values():
            kind = KINDS[push.kind]
            verdicts[kind][push.status] += 1
            if push.kind in "ua":
                user = by_name[push.target]
                if push.status == "missing" and self.connected_throughout(user, push):
                    self.anomalies["missing while connected"] += 1
                if push.status == "error" and push.pid in user.got:
                    verdicts[kind]["error, received anyway"] += 1
                if push.status != "delivered":
                    continue
                if push.kind == "a":
                    outcomes.update(self.check_outcomes(push, user))
                verdict = self.unicast_verdict(push, user)
                verdicts[kind][verdict] += 1
                if verdict == "lost":
                    lost.append(self.describe(push, user.conns))
                elif verdict != "received":  # accounted, but never seen: keep a trace
                    unseen.append(self.describe(push, user.conns))
                continue
            if push.status != "queued":
                continue
            for user in self.users if push.kind == "b" else by_tag[push.target]:
                for c in user.conns:
                    verdict = self.queue_verdict(push, c)
                    if verdict:
                        verdicts[kind][verdict] += 1
                    if verdict == "lost":
                        lost.append(self.describe(push, [c]))
        conns = [c for u in self.users for c in u.conns if c.is_upgraded]
        closes = Counter("harness" if c.closing else c.outcome or "open" for c in conns)
        unexpected = {k: n for k, n in closes.items() if k not in ("harness", "close 4501")}
        if unexpected:
            self.anomalies.update({f"closed {k}": n for k, n in unexpected.items()})
        if self.close_timeouts:
            self.anomalies["no answer to our close"] += self.close_timeouts
        if self.connect_failures:
            self.anomalies["connect failures"] += self.connect_failures
        received = [p for p in self.pushes.values() if p.kind in "ua" and p.pid in self.first_rx]
        latencies = sorted((self.first_rx[p.pid] - p.sent) * 1000 for p in received)
        answers = sorted((p.answered - p.sent) * 1000 for p in received)
        p50, p99 = quantile(latencies, 0.5), quantile(latencies, 0.99)
        return {
            "pushes_per_s": self.rates(),
            "unicast_p50_ms": round(p50, 2) if p50 is not None else None,
            "unicast_p99_ms": round(p99, 2) if p99 is not None else None,
            "unicast_answer_p50_ms": round(quantile(answers, 0.5) or 0.0, 2),
            "unicast_answer_p99_ms": round(quantile(answers, 0.99) or 0.0, 2),
            "late": self.late(received),
            "verdicts": {k: dict(v) for k, v in verdicts.items()},
            "losses": sum(v["lost"] for v in verdicts.values()),
            "lost": lost[:LOST_KEPT],
            "unicast_unseen": unseen[:LOST_KEPT],
            "ack_outcomes": dict(outcomes),
            "replaced_4501": closes.get("close 4501", 0),
            "closes": dict(closes),
            "resends_received": self.resends,
            "anomalies": dict(self.anomalies),
            "api_errors": dict(self.errors),
        }

    def late(self, received: list[Push]) -> list[list[float]]:
        """The LATE_KEPT slowest unicast pushes over LATE to the client, in send
        order: [s since the first push, ms to the API answer, ms to the client], to
        tell a stall (a cluster) from noise and the API's share from the socket's."""
        start = min((p.sent for p in self.pushes.values()), default=0.0)
        slow = sorted(
            (p for p in received if self.first_rx[p.pid] - p.sent >= LATE),
            key=lambda p: self.first_rx[p.pid] - p.sent,
        )[-LATE_KEPT:]
        return [
            [
                round(p.sent - start, 2),
                round((p.answered - p.sent) * 1000, 1),
                round((self.first_rx[p.pid] - p.sent) * 1000, 1),
            ]
            for p in sorted(slow, key=lambda p: p.sent)
        ]

    def rates(self) -> dict[str, float]:
        """Answered pushes per second of each kind, over the span its pushes were sent
        in (the load phase also waits for the last churned users to come back)."""
        out = {}
        for key, kind in KINDS.items():
            sent = [p.sent for p in self.pushes.values() if p.kind == key]
            answered = sum(p.status != "error" for p in self.pushes.values() if p.kind == key)
            span = max(sent) - min(sent) if len(sent) > 1 else 0.0
            out[kind] = round(answered / span, 1) if span else 0.0
        return out

    @staticmethod
    def connected_throughout(user: User, push: Push) -> bool:
        """A connection of ``user`` registered before the push and never closed."""
        return any(c.stayed and 0 < c.ready <= push.sent for c in user.conns)

    def unicast_verdict(self, push: Push, user: User) -> str:
        if push.pid in user.got:
            return "received"
        if push.kind == "a":
            expired = any(o["outcome"] == "expired" for o in self.outcomes.by_sid.get(push.sid, []))
            return "expired" if expired else "lost"
        closed = any(
            c.is_upgraded and not c.stayed and c.opened < push.answered and c.ended >= push.sent
            for c in user.conns
        )
        return "excused (closed)" if closed else "lost"

    def check_outcomes(self, push: Push, user: User) -> Counter[str]:
        """Outcome counts of one ack push; anomalies for none, several or odd ones."""
        found = self.outcomes.by_sid.get(push.sid, [])
        if not found:
            self.anomalies["ack push without outcome"] += 1
        elif len(found) > 1:
            self.anomalies["ack push with several outcomes"] += 1
        counts: Counter[str] = Counter()
        for o in found:
            if o["outcome"] == "acked":
                counts["acked"] += 1
                if not user.acker:
                    self.anomalies["acked by a never-acker"] += 1
                if push.pid not in user.got:
                    self.anomalies["acked, never received"] += 1
            else:
                counts[f"expired {o['reason']}"] += 1
        return counts

    @staticmethod
    def queue_verdict(push: Push, c: Client) -> str:
        """A tag push or broadcast at one connection of a matching user ("": not owed)."""
        if not c.ready or c.ready > push.sent:
            return ""
        if push.pid in c.got:
            return "received"
        if c.stayed:
            return "lost"
        return "excused (closed)" if c.ended >= push.sent else ""

    def describe(self, push: Push, conns: list[Client]) -> dict[str, Any]:
        """A push not received, its ack outcomes and the connections it could have
        reached, times relative to its send (s)."""
        outcomes = self.outcomes.by_sid

        def rel(t: float) -> float | None:
            return round(t - push.sent, 3) if t else None

        return {
            "kind": KINDS[push.kind],
            "pid": push.pid,
            "target": push.target,
            "sid": push.sid,
            "answered": rel(push.answered),
            "acker": conns[0].user.acker if conns else None,
            "outcomes": [
                {k: o[k] for k in ("outcome", "reason", "tries")}
                for o in outcomes.get(push.sid, [])
            ],
            "conns": [
                {
                    "opened": rel(c.opened),
                    "ready": rel(c.ready),
                    "ended": rel(c.ended),
                    "outcome": c.outcome,
                    "stayed": c.stayed,
                }
                for c in conns
            ],
        }


async def server_stats(server: Running) -> dict[str, Any]:
    async with server.session.get(server.base + "stats") as r:
        stats: dict[str, Any] = await r.json()
    return {k: stats[k] for k in ("connections", "unacked", "tag_groups", "queue_length")}


async def soak_session(args: argparse.Namespace) -> dict[str, Any]:
    extra = [
        *("--ack-interval", str(args.ack_interval), "--ack-max-tries", str(args.ack_max_tries)),
        *("--ack-keep-offline", str(args.ack_keep_offline), *shlex.split(args.server_args)),
    ]
    outcomes = Outcomes()
    async with running(IM, extra_args=extra) as server:
        events = await server.session.get(
            server.base + "ack_events", timeout=aiohttp.ClientTimeout(total=None)
        )
        subscribed = asyncio.get_running_loop().create_future()
        reader = asyncio.ensure_future(read_ack_events(events, outcomes.on_event, subscribed))
        api: Api = GrpcApi(server) if args.api == "grpc" else HttpApi(server)
        try:
            await asyncio.wait_for(subscribed, 10)
            await asyncio.sleep(2.0)  # a started, idle server
            baseline = {"rss_mb": round(server.rss_kb() / 1024, 1), **await server_stats(server)}
            cycles = []
            for n in range(1, args.cycles + 1):
                t0 = time.monotonic()
                cycles.append(await Cycle(n, server, api, outcomes, args).run())
                print(f"cycle {n} ({time.monotonic() - t0:.0f} s): {brief(cycles[-1])}", flush=True)
        finally:
            await api.close()
            reader.cancel()
            events.close()
    return {"baseline": baseline, "cycles": cycles, "ack_event_errors": outcomes.errors}


def brief(c: dict[str, Any]) -> str:
    return (
        f"losses {c['losses']}, anomalies {c['anomalies'] or 'none'}, RSS {c['rss_mb']} MB, "
        f"stats {c['stats']}"
    )


def judge(result: dict[str, Any]) -> dict[str, bool]:
    cycles = result["cycles"]
    out = {"delivery": all(c["losses"] == 0 for c in cycles)}
    if len(cycles) >= 2:
        out["rss"] = cycles[1]["rss_mb"] <= cycles[0]["rss_mb"] * RSS_GROWTH_MAX
    return out


def table(result: dict[str, Any]) -> str:
    cycles = result["cycles"]
    head = ["measure", *(f"cycle {c['cycle']}" for c in cycles)]
    rows = [head, ["---"] * len(head)]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        rows.append([label, *(cell(c) for c in cycles)])

    def n(v: Any) -> str:
        return f"{v:,}" if isinstance(v, int) else f"{v:,.1f}" if isinstance(v, float) else "-"

    def counts(kind: str, c: dict[str, Any], *keys: str) -> str:
        return " / ".join(n(c["verdicts"][kind].get(k, 0)) for k in keys)

    def verdict(kind: str, c: dict[str, Any]) -> str:
        v = c["verdicts"][kind]
        keys = ("received", "expired", "excused (closed)", "lost")
        return " / ".join(f"{n(v.get(k, 0))} {k}" for k in keys if k in v or k == "lost")

    row(
        "pushes/s: unicast / unicast ack / tag / broadcast",
        lambda c: " / ".join(n(c["pushes_per_s"][k]) for k in KINDS.values()),
    )
    for kind in ("unicast", "unicast_ack"):
        rows.append(
            [f"{kind}: delivered / missing (API)"]
            + [counts(kind, c, "delivered", "missing") for c in cycles]
        )
        rows.append([f"  {kind} delivered ->", *(verdict(kind, c) for c in cycles)])
    for kind in ("tag", "broadcast"):
        rows.append(
            [f"{kind} pushes queued / (push, connection) owed ->"]
            + [f"{counts(kind, c, 'queued')} / {verdict(kind, c)}" for c in cycles]
        )
    row("**losses**", lambda c: f"**{n(c['losses'])}**")
    row(
        "unicast push -> client p50 / p99, ms",
        lambda c: f"{c['unicast_p50_ms']} / {c['unicast_p99_ms']}",
    )
    row(
        "unicast push -> API answer p50 / p99, ms",
        lambda c: f"{c['unicast_answer_p50_ms']} / {c['unicast_answer_p99_ms']}",
    )
    row(
        "ack outcomes",
        lambda c: ", ".join(f"{n(v)} {k}" for k, v in sorted(c["ack_outcomes"].items())) or "-",
    )
    row("re-sent unicast frames received", lambda c: n(c["resends_received"]))
    row(
        "connects: population per s / during load (per s of the load phase)",
        lambda c: (
            f"{n(c['connects_per_s_population'])} / {n(c['connects_during_load'])} "
            f"({n(c['connects_per_s_load'])})"
        ),
    )
    row(
        "second logins / 4501 replacements",
        lambda c: f"{n(c['second_logins'])} / {n(c['replaced_4501'])}",
    )
    row("anomalies", lambda c: ", ".join(f"{k} {v}" for k, v in c["anomalies"].items()) or "none")
    row(
        "API errors (of which received anyway)",
        lambda c: (
            f"{n(sum(c['api_errors'].values()))} ("
            + n(sum(v.get("error, received anyway", 0) for v in c["verdicts"].values()))
            + ")"
        ),
    )
    row(
        "CPU during load: server (others on its core) / harness (others on its core)",
        lambda c: (
            f"{c['server_busy']:.2f} ({c['others_on_core']:.2f}) / "
            f"{c['loadgen_busy']:.2f} ({c['others_on_loadgen_core']:.2f})"
        ),
    )
    row("server RSS after settle, MB (peak)", lambda c: f"{c['rss_mb']} ({c['rss_peak_mb']})")
    row(
        "server after settle: connections / unacked / tag groups",
        lambda c: (
            f"{c['stats']['connections']} / {c['stats']['unacked']} / {c['stats']['tag_groups']}"
        ),
    )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("soak")
    g.add_argument("--api", choices=("http", "grpc"), default="http", help="soak: push API")
    g.add_argument("--cycles", type=int, default=2, help="soak: identical load cycles")
    g.add_argument("--population", type=int, default=3000, help="soak: users")
    g.add_argument("--groups", type=int, default=20, help="soak: tag groups (g0, g1, ...)")
    g.add_argument("--never-ack-every", type=int, default=5, help="soak: every Nth user never acks")
    g.add_argument("--unicast-rate", type=float, default=400.0, help="soak: pushes/s")
    g.add_argument("--tag-rate", type=float, default=5.0, help="soak: tag pushes/s")
    g.add_argument("--broadcast-rate", type=float, default=0.5, help="soak: broadcasts/s")
    g.add_argument("--churn-rate", type=float, default=20.0, help="soak: reconnects/s")
    g.add_argument(
        "--pending-churn-every",
        type=int,
        default=5,
        help="soak: every Nth churn takes a never-acker with a receipt pending",
    )
    g.add_argument("--second-login-rate", type=float, default=2.0, help="soak: per second")
    g.add_argument("--load-seconds", type=float, default=50.0, help="soak: pushing, per cycle")
    g.add_argument("--drain-seconds", type=float, default=3.0, help="soak: before closing")
    g.add_argument("--settle-seconds", type=float, default=20.0, help="soak: idle, then RSS")
    g.add_argument("--ack-interval", type=float, default=1.0, help="soak: the server's option")
    g.add_argument("--ack-max-tries", type=int, default=3, help="soak: the server's option")
    g.add_argument("--ack-keep-offline", type=float, default=5.0, help="soak: the server's option")
    g.add_argument("--seed", type=int, default=1, help="soak: random seed of every cycle")


def main(args: argparse.Namespace, results: Path, versions: dict[str, str]) -> int:
    import uvloop

    t0 = time.monotonic()
    result = uvloop.run(soak_session(args))
    result["targets"] = judge(result)
    print(table(result))
    base, cycles = result["baseline"], result["cycles"]
    rss = [c["rss_mb"] for c in cycles]
    print(f"server RSS: baseline {base['rss_mb']} MB, after each settle {rss} MB")
    print(
        "targets:",
        ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in result["targets"].items()),
    )
    took = time.monotonic() - t0
    print(f"took {took:.0f} s")
    meta = {
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "versions": versions,
        "cpus": {"server": 0, "loadgen": LOADGEN_CPU},
        "took_s": round(took, 1),
        "args": {k: v for k, v in vars(args).items() if k in SOAK_ARGS},
    }
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, **result}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if all(result["targets"].values()) else 1


#: the options that shape a soak run, recorded with its result
SOAK_ARGS = frozenset(
    "api cycles population groups never_ack_every unicast_rate tag_rate broadcast_rate "
    "churn_rate pending_churn_every second_login_rate load_seconds drain_seconds settle_seconds "
    "ack_interval ack_max_tries ack_keep_offline seed server_args".split()
)
