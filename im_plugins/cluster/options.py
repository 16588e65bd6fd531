"""Options every cluster broker reads; each broker plugin declares them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def add_options(add: Callable[..., None]) -> None:
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


def hold_ttl(options: Any) -> float:
    """How long a "held" marker outlives the disconnect: an offline user's entries
    expire ``ack_keep_offline`` after the first re-send that found them gone."""
    return float(options.ack_keep_offline + 2 * options.ack_interval + 1.0)
