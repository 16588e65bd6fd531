"""Ack receipts: sid allocation, the unacked window, re-send timing and expiry.

Rules (docs/protocol.md, "Ack flow"):
- every acked push gets a non-zero sid, unique across the cluster: node id in the
  high bits, a counter seeded from the clock below it; sids stay below 2**53 so
  JavaScript clients read them exactly;
- an entry is sent up to ``max_tries`` times, one every ``interval``; when the last
  interval passes without a receipt it expires (``reason="max_tries"``);
- a send that finds the user offline uses no try; the entry waits ``keep_offline``
  seconds for the user to return (then expires with ``reason="offline"``); when the
  user reconnects, every unacked entry with a try left is re-delivered at once, in
  order (``max_tries`` is a hard limit: a reconnect after the last try sends nothing);
- a push kept for an offline user (``store``, docs/protocol.md "Offline inbox") is
  *parked*: it uses no try and is not re-sent until the user connects; it expires
  ``ttl`` seconds after it was kept (``reason="offline"``); when the user connects it
  is sent at once and then follows the rules above;
- in a cluster the entries follow the user: the node the user reconnects to takes
  them over (``take`` on the old node, ``adopt`` on the new one) with their sid,
  order and try count; the old node forgets them without an outcome.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import attrs

NODE_BITS = 10
COUNTER_BITS = 42
_COUNTER_MASK = (1 << COUNTER_BITS) - 1


class SidAllocator:
    def __init__(self, node_id: int) -> None:
        if not 0 <= node_id < 1 << NODE_BITS:
            raise ValueError(f"node_id must be 0-{(1 << NODE_BITS) - 1}")
        self._high = node_id << COUNTER_BITS
        # Milliseconds since the epoch: a restarted node continues above its old sids
        # unless it handed out more than 1000 acked pushes per second on average.
        self._counter = int(time.time() * 1000) & _COUNTER_MASK

    def next(self) -> int:
        self._counter = (self._counter + 1) & _COUNTER_MASK
        if self._counter == 0:
            self._counter = 1
        return self._high | self._counter


def node_of(sid: int) -> int:
    return sid >> COUNTER_BITS


@attrs.frozen(slots=True)
class AckOutcome:
    """How an acked push ended for one user; reported to the node that allocated
    the sid (``node_of(sid)``), where ``im_ack_outcome`` fires."""

    outcome: Literal["acked", "expired"]
    user_id: str
    sid: int
    tries: int = 0
    reason: str = ""  # expired only: "max_tries" or "offline"
    payload: bytes = b""  # expired only: lets the backend store it for later
    device: str = ""  # the device whose ack state it was ("": the user's only one)


class Unacked:
    __slots__ = (
        "at", "device", "done", "due", "offline_since", "parked", "payload", "queued", "sid",
        "tries", "user_id",
    )  # fmt: skip

    def __init__(
        self,
        user_id: str,
        sid: int,
        payload: bytes,
        due: float,
        at: float | None = None,
        device: str = "",
    ) -> None:
        self.at = time.time() if at is None else at  # unix seconds: catch-up order
        self.user_id = user_id
        self.device = device  # each device of a user has its own ack state
        self.sid = sid
        self.payload = payload
        self.tries = 0
        self.due = due
        self.offline_since: float | None = None
        self.done = False
        self.parked = False  # kept for an offline user: ``due`` is its expiry
        # Sent to a connection still being set up: already in its queue, so the
        # catch-up after the setup must not send it again.
        self.queued = False


Key = int | tuple[str, int]


def key(device: str, sid: int) -> Key:
    return (device, sid) if device else sid


class AckTracker:
    def __init__(
        self,
        *,
        interval: float,
        max_tries: int,
        keep_offline: float,
        clock: Callable[[], float],
        resend: Callable[[Unacked], bool],
        on_acked: Callable[[Unacked], None],
        on_expired: Callable[[Unacked, str], None],
    ) -> None:
        self.interval = interval
        self.max_tries = max_tries
        self.keep_offline = keep_offline
        self._clock = clock
        self._resend = resend
        self._on_acked = on_acked
        self._on_expired = on_expired
        # user -> entries by sid, or by (device, sid) for a named device: the common
        # case (one device per user) keys by the bare sid.
        self._by_user: dict[str, dict[Key, Unacked]] = {}
        self._due: deque[Unacked] = deque()
        # Parked entries by expiry: apart from ``_due`` so that thousands kept for
        # offline users cost nothing per interval (one ttl for all keeps it sorted).
        self._parked: deque[Unacked] = deque()

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_user.values())

    def track(self, user_id: str, sid: int, payload: bytes, device: str = "") -> Unacked:
        """Remember a message just sent to ``user_id``'s ``device`` (its first try)."""
        entry = Unacked(user_id, sid, payload, self._clock() + self.interval, None, device)
        entry.tries = 1
        self._by_user.setdefault(user_id, {})[key(device, sid)] = entry
        self._due.append(entry)
        return entry

    def park(self, user_id: str, sid: int, payload: bytes, ttl: float) -> Unacked | None:
        """Keep a message for ``user_id``, who is offline, for ``ttl`` seconds (no try
        used). None if the sid is already tracked for them."""
        entries = self._by_user.setdefault(user_id, {})
        if sid in entries:
            return None
        entry = Unacked(user_id, sid, payload, self._clock() + ttl)
        entry.parked = True
        entries[sid] = entry
        self._parked.append(entry)
        return entry

    def inbox(self, user_id: str) -> tuple[int, int]:
        """How many entries ``user_id`` has, and their bytes."""
        entries = self._by_user.get(user_id)
        if not entries:
            return 0, 0
        return len(entries), sum(len(e.payload) for e in entries.values())

    def ack(self, user_id: str, sid: int, device: str = "") -> bool:
        """A receipt from ``user_id``'s ``device``; False if the sid is unknown or not
        theirs."""
        entries = self._by_user.get(user_id)
        entry = entries.pop(key(device, sid), None) if entries else None
        if entry is None:
            return False
        if not entries:
            del self._by_user[user_id]
        entry.done = True
        self._on_acked(entry)
        return True

    def tracks(self, user_id: str, sid: int, device: str = "") -> bool:
        entries = self._by_user.get(user_id)
        return entries is not None and key(device, sid) in entries

    def pending(self, user_id: str) -> list[Unacked]:
        """Unacked entries of ``user_id`` (every device) in the order they were first sent."""
        return list(self._by_user.get(user_id, {}).values())

    def owed(self, user_id: str, device: str) -> list[Unacked]:
        """What a connection of ``device`` gets on connecting: that device's entries
        and the user's parked ones (which become that device's: the first device to
        connect takes the user's inbox)."""
        entries = self._by_user.get(user_id)
        if not entries:
            return []
        out = []
        for k, entry in list(entries.items()):
            if entry.parked and entry.device != device:
                del entries[k]
                entry.device = device
                entries[key(device, entry.sid)] = entry
            elif entry.device != device:
                continue
            out.append(entry)
        return out

    def has(self, user_id: str) -> bool:
        return user_id in self._by_user

    def take(self, user_id: str, device: str = "") -> list[Unacked]:
        """Forget the entries of the user's ``device`` without an outcome (another
        node adopts them); returned in the order they were first sent."""
        entries = self._by_user.get(user_id)
        if not entries:
            return []
        taken = [e for e in entries.values() if e.device == device]
        for entry in taken:
            entry.done = True  # the due queue skips it from now on
            del entries[key(device, entry.sid)]
        if not entries:
            del self._by_user[user_id]
        return taken

    def shared(self, user_id: str, sid: int) -> bool:
        """Whether another device of ``user_id`` still tracks ``sid`` here."""
        entries = self._by_user.get(user_id)
        return entries is not None and any(e.sid == sid for e in entries.values())

    def adopt(
        self,
        user_id: str,
        sid: int,
        payload: bytes,
        tries: int,
        at: float | None = None,
        device: str = "",
    ) -> Unacked | None:
        """Track an entry handed over by another node (or kept by the broker, first
        sent ``at``), keeping its try count; it is due one interval from now. None if
        the sid is already tracked here for that device."""
        entries = self._by_user.setdefault(user_id, {})
        k = key(device, sid)
        known = entries.get(k)
        if known is not None:
            if at is not None and at < known.at:  # handed over: the broker knows its age
                known.at = at
            return None
        entry = Unacked(user_id, sid, payload, self._clock() + self.interval, at, device)
        entry.tries = tries
        entries[k] = entry
        self._due.append(entry)
        return entry

    def redeliver(self, entry: Unacked, send: Callable[[Unacked], bool]) -> None:
        """Re-send ``entry`` at once because its user (re)connected: a try like any
        other. An entry that is done or has used all ``max_tries`` is not sent again;
        it expires at its due time. ``send`` returns whether it was sent."""
        if entry.done or entry.tries >= self.max_tries:
            return
        if send(entry):
            entry.tries += 1
            entry.offline_since = None
            if entry.parked:  # from now on re-sent and expired like any other
                entry.parked = False
                entry.due = self._clock() + self.interval
                self._due.append(entry)

    def tick(self) -> None:
        """Re-send or expire every entry whose interval has passed."""
        now = self._clock()
        parked = self._parked
        while parked and (parked[0].due <= now or not parked[0].parked or parked[0].done):
            entry = parked.popleft()
            if entry.parked and not entry.done:
                self._expire(entry, "offline")
        due = self._due
        while due and due[0].due <= now:
            entry = due.popleft()
            if entry.done:
                continue
            if entry.tries >= self.max_tries:
                self._expire(entry, "max_tries")
                continue
            if self._resend(entry):
                entry.tries += 1
                entry.offline_since = None
            elif entry.offline_since is None:
                entry.offline_since = now
            elif now - entry.offline_since >= self.keep_offline:
                self._expire(entry, "offline")
                continue
            entry.due = now + self.interval
            due.append(entry)

    def _expire(self, entry: Unacked, reason: str) -> None:
        entries = self._by_user.get(entry.user_id)
        if entries is not None:
            entries.pop(key(entry.device, entry.sid), None)
            if not entries:
                del self._by_user[entry.user_id]
        entry.done = True
        self._on_expired(entry, reason)
