"""The messages nodes send each other, and how they travel as bytes.

A message is one JSON array, a newline, then raw bytes that are never re-encoded
(a push's payload, the payloads of ack outcomes or handed-over entries)::

    [v, kind, origin, ref, field, field, ...]\\n<payload>

``v`` is the wire version (``VERSION``); ``kind`` names the message class; ``origin``
is the sending node; ``ref`` is a number, 0 when unused: the id of a request, which
its reply carries back (Redis), or the message id of a broadcast or tag push (``push``),
which a receiver delivers once whether it comes again after a broker failure or, on
NATS, once per tag subject; a reply always carries the ``ref`` of its request;
the fields follow in the order of the class's ``dump``. Positional fields keep the hot
path (one ``pushes`` per holding node for the pushes to it queued meanwhile) as small
as JSON gets.

Versioning: a node speaks exactly one version. Any change to the wire — a field
added, removed, reordered or read differently, a new kind — is a new ``VERSION``.
A node refuses a message of any other version (or of a kind it does not know) with
one log line per sender and cause (rate-limited) and does not answer it: the sender
sees what it sees of a hung peer (a request times out after ``--broker-timeout``;
users of a push are reported not reached). A refusal cannot be an error reply,
since the sender may not read our version either.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, NamedTuple, Self

import attrs
import orjson

from im_core.ack import AckOutcome
from im_core.broker import Kind, Push

# 2: devices (Take names one and several replaced connections; Outcomes)
# 3: pushes to users go several to a message (Pushes; NotReached per push)
# 4: broadcasts to everyone go several to a message (Broadcasts)
VERSION = 4


class Refused(ValueError):
    """A message this node cannot read; ``cause`` groups refusals for the log."""

    def __init__(self, cause: str, why: str, origin: object = None) -> None:
        super().__init__(f"refused a message from node {origin}: {why}")
        self.cause = f"{cause}:{origin}"


# --- requests and notices (answered by ``peer``) ----------------------------------
# Messages are treated as immutable but not frozen: a frozen attrs class costs about
# three times as much to build, once per push on each side.


@attrs.define(slots=True)
class Deliver:
    """Deliver a broadcast or tag push to the receiver's connections (not answered);
    pushes to users travel in ``Pushes``."""

    kind: ClassVar[str] = "push"
    target: Kind
    users: tuple[str, ...]
    tags: tuple[str, ...]
    sid: int
    payload: bytes

    @classmethod
    def of(cls, push: Push) -> Self:
        return cls(push.kind, push.users, push.tags, push.sid, push.payload)

    def push(self) -> Push:
        return Push(self.target, self.payload, self.users, self.tags, self.sid)

    def dump(self, head: list[Any]) -> bytes:
        head += (self.target, self.users, self.tags, self.sid)
        return self.payload

    @classmethod
    def load(cls, head: list[Any], payload: bytes) -> Self:
        _, _, _, _, target, users, tags, sid = head
        return cls(target, tuple(users), tuple(tags), int(sid), payload)


class Unicast(NamedTuple):
    """A push to the receiver's share of its users."""

    users: tuple[str, ...]
    sid: int
    payload: bytes

    def push(self) -> Push:
        return Push("users", self.payload, self.users, (), self.sid)


def _split(rows: list[list[Any]], payload: bytes) -> list[tuple[list[Any], bytes]]:
    """Rows whose last field is the size of their share of ``payload``, each with it."""
    out, at = [], 0
    for row in rows:
        size = row[-1]
        out.append((row, payload[at : at + size]))
        at += size
    return out


@attrs.define(slots=True)
class Pushes:
    """Pushes to users, delivered in order (a user's pushes from one node arrive as
    they were made); answered with ``NotReached``, one entry per push."""

    kind: ClassVar[str] = "pushes"
    pushes: tuple[Unicast, ...]

    def dump(self, head: list[Any]) -> bytes:
        head.append([[p.users, p.sid, len(p.payload)] for p in self.pushes])
        return b"".join(p.payload for p in self.pushes)

    @classmethod
    def load(cls, head: list[Any], payload: bytes) -> Self:
        return cls(
            tuple(
                Unicast(tuple(str(u) for u in users), int(sid), data)
                for (users, sid, _), data in _split(head[4], payload)
            )
        )


@attrs.define(slots=True)
class Broadcasts:
    """Broadcasts to everyone, delivered in order (not answered): those a node queued
    meanwhile travel together, so another node takes a burst in one message."""

    kind: ClassVar[str] = "broadcasts"
    #: (message id, sid, payload): the id is what a ``push``'s ``ref`` is for one
    items: tuple[tuple[int, int, bytes], ...]

    @classmethod
    def of(cls, pushes: Iterable[tuple[int, Push]]) -> Self:
        return cls(tuple((mid, p.sid, p.payload) for mid, p in pushes))

    def pushes(self) -> Iterator[tuple[int, Push]]:
        for mid, sid, payload in self.items:
            yield mid, Push("all", payload, (), (), sid)

    def dump(self, head: list[Any]) -> bytes:
        head.append([[mid, sid, len(payload)] for mid, sid, payload in self.items])
        return b"".join(payload for _, _, payload in self.items)

    @classmethod
    def load(cls, head: list[Any], payload: bytes) -> Self:
        return cls(
            tuple((int(mid), int(sid), data) for (mid, sid, _), data in _split(head[4], payload))
        )


@attrs.define(slots=True)
class Outcomes:
    """Ack outcomes of pushes whose sids the receiver allocated (not answered)."""

    kind: ClassVar[str] = "outcomes"
    outcomes: tuple[AckOutcome, ...]

    def dump(self, head: list[Any]) -> bytes:
        rows = [
            [o.outcome, o.user_id, o.sid, o.tries, o.reason, o.device, len(o.payload)]
            for o in self.outcomes
        ]
        head.append(rows)
        return b"".join(o.payload for o in self.outcomes)

    @classmethod
    def load(cls, head: list[Any], payload: bytes) -> Self:
        return cls(
            tuple(
                AckOutcome(o, user, sid, tries, reason, data, device)
                for (o, user, sid, tries, reason, device, _), data in _split(head[4], payload)
            )
        )


@attrs.define(slots=True)
class Take:
    """Hand over the unacked entries of the user's ``device`` (answered with
    ``Taken``); first close the user's connections ``replaced`` there with REPLACED."""

    kind: ClassVar[str] = "take"
    user: str
    device: str = ""
    replaced: tuple[str, ...] = ()

    def dump(self, head: list[Any]) -> bytes:
        head += (self.user, self.device, self.replaced)
        return b""

    @classmethod
    def load(cls, head: list[Any], payload: bytes) -> Self:
        _, _, _, _, user, device, replaced = head
        return cls(str(user), str(device), tuple(str(c) for c in replaced))


@attrs.define(slots=True)
class Kick:
    """Close the user's connection (only ``conn_id``, when given); answered with ``Done``."""

    kind: ClassVar[str] = "kick"
    user: str
    code: int
    reason: str
    conn_id: str | None = None

    def dump(self, head: list[Any]) -> bytes:
        head += (self.user, self.code, self.reason, self.conn_id)
        return b""

    @classmethod
    def load(cls, head: list[Any], payload: bytes) -> Self:
        _, _, _, _, user, code, reason, conn_id = head
        return cls(str(user), int(code), str(reason), conn_id)


@attrs.define(slots=True)
class Retag:
    """Change the tags of the user's connection; answered with ``Done``."""

    kind: ClassVar[str] = "retag"
    user: str
    add: tuple[str, ...]
    remove: tuple[str, ...]

    def dump(self, head: list[Any]) -> bytes:
        head += (self.user, self.add, self.remove)
        return b""

    @classmethod
    def load(cls, head: list[Any], payload: bytes) -> Self:
        _, _, _, _, user, add, remove = head
        return cls(str(user), tuple(add), tuple(remove))


# --- replies ------------------------------------------------------------------------


@attrs.define(slots=True)
class NotReached:
    """Answer to ``Pushes``: per push, in order, the users the receiver did not reach."""

    kind: ClassVar[str] = "missed"
    users: tuple[tuple[str, ...], ...]

    def dump(self, head: list[Any]) -> bytes:
        head.append(self.users)
        return b""

    @classmethod
    def load(cls, head: list[Any], payload: bytes) -> Self:
        _, _, _, _, users = head
        return cls(tuple(tuple(str(u) for u in missed) for missed in users))


class Entry(NamedTuple):
    """One handed-over unacked entry (its user is the ``Take``'s)."""

    sid: int
    tries: int
    payload: bytes


@attrs.define(slots=True)
class Taken:
    """Answer to ``Take``: the entries, in order, the receiver gave up."""

    kind: ClassVar[str] = "taken"
    entries: tuple[Entry, ...]

    def dump(self, head: list[Any]) -> bytes:
        rows = [[e.sid, e.tries, len(e.payload)] for e in self.entries]
        head.append(rows)
        return b"".join(e.payload for e in self.entries)

    @classmethod
    def load(cls, head: list[Any], payload: bytes) -> Self:
        return cls(
            tuple(
                Entry(int(sid), int(tries), data)
                for (sid, tries, _), data in _split(head[4], payload)
            )
        )


@attrs.define(slots=True)
class Done:
    """Answer to ``Kick`` / ``Retag``: whether the user was there; ``error`` when the
    receiver refused the request as the caller's mistake (an invalid tag)."""

    kind: ClassVar[str] = "done"
    ok: bool
    error: str = ""

    def dump(self, head: list[Any]) -> bytes:
        head += (self.ok, self.error)
        return b""

    @classmethod
    def load(cls, head: list[Any], payload: bytes) -> Self:
        _, _, _, _, ok, error = head
        return cls(bool(ok), str(error))


Request = Pushes | Take | Kick | Retag
Reply = NotReached | Taken | Done
Message = Deliver | Broadcasts | Pushes | Outcomes | Take | Kick | Retag | NotReached | Taken | Done
REPLIES: tuple[type[Reply], ...] = (NotReached, Taken, Done)
KINDS: dict[str, type[Message]] = {
    cls.kind: cls
    for cls in (Deliver, Broadcasts, Pushes, Outcomes, Take, Kick, Retag, NotReached, Taken, Done)
}


def encode(message: Message, origin: int, ref: int = 0) -> bytes:
    head: list[Any] = [VERSION, message.kind, origin, ref]
    payload = message.dump(head)  # each class appends its fields
    return orjson.dumps(head) + b"\n" + payload


def decode(data: bytes) -> tuple[int, int, Message]:
    """(origin, ref, message) of ``data``; raises ``Refused`` when it is not a message
    of this node's version and kinds."""
    cut = data.find(b"\n")
    try:
        head = orjson.loads(data[:cut]) if cut >= 0 else None
    except orjson.JSONDecodeError:
        head = None
    if type(head) is not list or len(head) < 4 or head[0] != VERSION:
        version, origin = _version_of(head)
        if version is None:
            raise Refused("unreadable", "not a message of any wire version", origin)
        raise Refused(
            f"v{version}", f"wire version {version!r} (this node speaks {VERSION})", origin
        )
    cls = KINDS.get(head[1])
    if cls is None:
        kind = head[1]
        raise Refused(f"kind {kind}", f"unknown kind {kind!r} of wire version {VERSION}", head[2])
    try:
        message = cls.load(head, data[cut + 1 :])
    except (TypeError, ValueError) as exc:
        kind = head[1]
        raise Refused(f"bad {kind}", f"malformed {kind!r}: {exc}", head[2]) from None
    return head[2], head[3], message


def _version_of(head: object) -> tuple[object, object]:
    """(version, origin) as far as a foreign header says: ``[v, kind, origin, ...]``
    or a JSON object with ``v`` (the unversioned format before version 1 had none)."""
    if isinstance(head, list) and head:
        return head[0], head[2] if len(head) > 2 else None
    if isinstance(head, dict):
        return head.get("v", 0), head.get("o")
    return None, None
