"""The queue of broadcasts a node holds for its broker (docs/decisions.md, "Broadcasts
the broker did not take"): in order, bounded in number and in age, and what it drops
is logged with a count, never lost silently."""

from __future__ import annotations

import logging
import time

import pytest

from im_core.broker import Push
from im_plugins.cluster.held import Held, Item


def items(*names: str) -> list[Item]:
    return [(Push("all", name.encode()), i) for i, name in enumerate(names)]


def payloads(got: list[Item]) -> list[bytes]:
    return [push.payload for push, _ in got]


def test_held_in_order_with_a_failed_batch_first() -> None:
    held = Held("nats")
    held.add(items("c", "d"))
    held.add(items("a", "b"), before=True)  # in flight when the broker failed: older
    assert payloads(held.take()) == [b"a", b"b", b"c", b"d"]
    assert len(held) == 0 and held.dropped == 0


def test_beyond_the_bound_the_oldest_are_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held = Held("redis", limit=3)
    with caplog.at_level(logging.INFO, logger="im.cluster"):
        held.add(items("a", "b", "c", "d", "e"))
    assert held.dropped == 2
    assert payloads(held.take()) == [b"c", b"d", b"e"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("holding broadcasts" in m for m in messages)
    assert "redis broker: 2 broadcasts reached only this node (more than 3 held)" in messages


def test_what_waited_too_long_is_dropped_when_the_broker_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held = Held("nats", hold_for=0.05)
    held.add(items("old"))
    time.sleep(0.1)
    held.add(items("new"))
    with caplog.at_level(logging.WARNING, logger="im.cluster"):
        assert payloads(held.take()) == [b"new"]
    assert held.dropped == 1
    assert [r.getMessage() for r in caplog.records] == [
        "nats broker: 1 broadcasts reached only this node (held longer than 0.05 s)"
    ]
