"""What the validate hook sees and what it answers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs


@attrs.frozen
class ConnectRequest:
    """A connection attempt, before the WebSocket upgrade."""

    token: str
    query: Mapping[str, str] = attrs.field(factory=dict)
    headers: Mapping[str, str] = attrs.field(factory=dict)
    remote: str | None = None
    path: str = "/conn"


def _user_id(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError("Identity.user_id must be a non-empty string")


def _tags(tags: Iterable[str]) -> tuple[str, ...]:
    # A typed converter (not ``tuple``) so callers may pass any iterable of str.
    return tuple(tags)


@attrs.frozen
class Identity:
    """An accepted connection: who it is, its initial tags, free-form metadata."""

    user_id: str = attrs.field(validator=_user_id)
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tags)
    meta: Mapping[str, Any] = attrs.field(factory=dict)
    #: Which of the user's devices this is (``--max-connections-per-user``); empty:
    #: the connection's ``device`` query parameter, if any.
    device: str = ""


@attrs.frozen
class Reject:
    """A refused connection: answered with ``status`` and ``{"error": {...}}``."""

    reason: str
    status: int = 401
