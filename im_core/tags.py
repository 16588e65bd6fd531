"""Tag groups of local connections (the original's "WTI"): membership and distribution."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from .connection import Connection


@attrs.frozen
class TagStat:
    tag: str
    number: int
    created: float  # unix seconds


class TagGroup:
    __slots__ = ("created", "members")

    def __init__(self, created: float) -> None:
        self.members: set[Connection] = set()
        self.created = created


class TagIndex:
    def __init__(self) -> None:
        self.groups: dict[str, TagGroup] = {}

    def add(self, conn: Connection, tags: Iterable[str], now: float) -> None:
        for tag in tags:
            group = self.groups.get(tag)
            if group is None:
                group = self.groups[tag] = TagGroup(now)
            group.members.add(conn)
            mine = conn.tags
            if not isinstance(mine, set):  # the shared empty NO_TAGS: its own set now
                mine = conn.tags = set()
            mine.add(tag)

    def remove(self, conn: Connection, tags: Iterable[str]) -> None:
        for tag in list(tags):
            group = self.groups.get(tag)
            if group is not None:
                group.members.discard(conn)
            mine = conn.tags
            if isinstance(mine, set):
                mine.discard(tag)

    def leave_all(self, conn: Connection) -> None:
        for tag in conn.tags:
            group = self.groups.get(tag)
            if group is not None:
                group.members.discard(conn)

    def any_of(self, tags: Iterable[str]) -> set[Connection]:
        out: set[Connection] = set()
        for tag in tags:
            group = self.groups.get(tag)
            if group is not None:
                out |= group.members
        return out

    def all_of(self, tags: Iterable[str]) -> set[Connection]:
        groups = [self.groups.get(tag) for tag in set(tags)]
        if not groups or any(g is None for g in groups):
            return set()
        groups.sort(key=lambda g: len(g.members))  # type: ignore[union-attr]
        first, *rest = groups
        return {c for c in first.members if all(c in g.members for g in rest)}  # type: ignore[union-attr]

    def distribution(self) -> dict[str, TagStat]:
        return {tag: TagStat(tag, len(g.members), g.created) for tag, g in self.groups.items()}

    def cleanup(self, now: float, ttl: float) -> list[str]:
        """Drop empty groups older than ``ttl``; return their names."""
        dropped = [tag for tag, g in self.groups.items() if not g.members and now - g.created > ttl]
        for tag in dropped:
            del self.groups[tag]
        return dropped
