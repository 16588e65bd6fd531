"""Prometheus metrics (``--plugin prometheus``): ``/metrics`` scraped over HTTP after
a known sequence of connects, pushes, refusals and closes has the counts it
should; a cluster node adds its broker's round trips and live nodes; every metric
the Grafana dashboard in examples/ queries is in a scrape."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from im_client import Client, ConnectError
from im_core import ConnectRequest, Reject, Server, hookimpl
from im_core.plugins import PluginError, get_plugin_manager

from .api_clients import ApiError, GrpcApi, HttpApi, grpc_target, http_base
from .cluster import broker_options, cleanup, new_prefix, require_broker
from .conftest import MakeServer, eventually

Connect = Callable[..., Awaitable[Client]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DASHBOARD = pathlib.Path(__file__).parent.parent / "examples" / "grafana" / "im-dashboard.json"


class DenyMallory:
    """A validate plugin that refuses one user (asked before token_auth)."""

    @hookimpl
    def im_validate(self, request: ConnectRequest) -> Reject | None:
        return Reject("mallory is not welcome", 403) if request.token == "mallory" else None


async def scrape_text(server: Server) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(http_base(server) + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return await response.text()


async def scrape(server: Server) -> Samples:
    """Every sample of a scrape: (sample name, labels) -> value."""
    samples: Samples = {}
    for family in text_string_to_metric_families(await scrape_text(server)):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def L(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def closed(code: str, close_class: str) -> frozenset[tuple[str, str]]:
    """The labels of ``im_disconnects_total`` (``class`` is a Python keyword)."""
    return L(code=code, **{"class": close_class})


async def known_sequence(server: Server, connect: Connect) -> None:
    """3 users over WebSocket with 2 codecs, 1 refused by validate; a push over HTTP,
    one over gRPC, one to an offline user, a broadcast, an ack push (acked), a
    kick and a client close."""
    alice = await connect(server, "alice")
    bob = await connect(server, "bob", codec="protobuf")
    carol = await connect(server, "carol", auto_ack=True)
    with pytest.raises(ConnectError):
        await connect(server, "mallory")
    async with aiohttp.ClientSession() as session:
        http = HttpApi(session, http_base(server))
        await http.call("PushUser", user="alice", data=b"over http")
        async with grpc.aio.insecure_channel(grpc_target(server)) as channel:
            await GrpcApi(channel).call("PushUser", user="bob", data=b"over grpc")
        with pytest.raises(ApiError) as offline:
            await http.call("PushUser", user="nobody", data=b"lost")
        assert offline.value.status == 404
        await http.call("Broadcast", data=b"to all")
        await server.push_one("carol", b"ack me", ack=True)  # embedded
        assert [(await alice.receive()).data for _ in range(2)] == [b"over http", b"to all"]
        assert [(await bob.receive()).data for _ in range(2)] == [b"over grpc", b"to all"]
        assert [(await carol.receive()).data for _ in range(2)] == [b"to all", b"ack me"]
        await eventually(lambda: len(server.acks) == 0)  # carol's ack arrived
        await http.call("Kick", user="carol")
    assert await carol.wait_closed() == 4502
    await alice.close()


async def settled(server: Server, disconnects: int) -> Samples:
    """A scrape once ``disconnects`` closes were counted (the hook runs after the close)."""
    found: Samples = {}

    async def closed() -> bool:
        nonlocal found
        found = await scrape(server)
        return sum(series(found, "im_disconnects_total").values()) >= disconnects

    await eventually(closed)
    return found


async def test_metrics_count_a_known_sequence(make_server: MakeServer, connect: Connect) -> None:
    server = await make_server(names=("prometheus",), plugins=(DenyMallory(),))
    await known_sequence(server, connect)
    m = await settled(server, disconnects=2)

    assert series(m, "im_connects_total") == {
        L(transport="websocket", codec="json"): 2,
        L(transport="websocket", codec="protobuf"): 1,
    }
    assert series(m, "im_connections") == {
        L(transport="websocket", codec="json"): 0,  # alice closed, carol kicked
        L(transport="websocket", codec="protobuf"): 1,
    }
    assert series(m, "im_refusals_total") == {L(status="403"): 1}
    disconnects = {k: v for k, v in series(m, "im_disconnects_total").items() if v}
    assert disconnects == {closed("1000", "normal"): 1, closed("4502", "kicked"): 1}
    assert m[("im_disconnects_total", closed("4001", "slow_consumer"))] == 0
    assert series(m, "im_pushes_total") == {
        L(api="http", method="PushUser", kind="user", outcome="ok"): 1,
        L(api="grpc", method="PushUser", kind="user", outcome="ok"): 1,
        L(api="http", method="PushUser", kind="user", outcome="not_found"): 1,
        L(api="http", method="Broadcast", kind="broadcast", outcome="ok"): 1,
        L(api="embedded", method="push_one", kind="user", outcome="ok"): 1,
    }
    assert value(m, "im_deliveries_total") == 6  # 2 each to alice, bob and carol
    assert value(m, "im_written_bytes_total") > 6 * len(b"to all")
    assert value(m, "im_inbound_frames_total") == 1  # carol's ack
    assert value(m, "im_acks_total", outcome="acked", reason="") == 1
    assert value(m, "im_acks_total", outcome="expired", reason="max_tries") == 0
    # One sample per outbox flush: at least one, at most one per delivery.
    assert 1 <= value(m, "im_push_to_write_seconds_count") <= 6
    assert value(m, "im_push_to_write_seconds_bucket", le="+Inf") == value(
        m, "im_push_to_write_seconds_count"
    )
    assert value(m, "im_broadcast_queue_length") == 0
    assert value(m, "im_broadcast_queue_capacity") == server.options.broadcast_buffer
    assert value(m, "im_broker_up", broker="memory") == 1
    assert value(m, "im_cluster_nodes") == 1
    assert value(m, "process_resident_memory_bytes") > 0

    async def bob_alone() -> bool:  # cluster-wide gauges are reused for a second
        return value(await scrape(server), "im_online_users") == 1

    await eventually(bob_alone)
    # Labels stay low-cardinality: no user id anywhere.
    text = await scrape_text(server)
    assert not re.search(r"alice|bob|carol|mallory|nobody", text)


async def test_invalid_pushes_are_counted_with_their_outcome(
    make_server: MakeServer,
) -> None:
    server = await make_server(names=("prometheus",))
    async with aiohttp.ClientSession() as session:
        base = http_base(server) + "/api/v1"
        async with session.post(base + "/push_user", data=b"{not json") as r:
            assert r.status == 400
        lines = b'{"all": true, "text": "a"}\nnot json\n{"text": "no target"}\n'
        async with session.post(base + "/push_stream", data=lines) as r:
            assert r.status == 200
        async with session.post(base + "/push_user", json={"user": "x", "text": "hi"}) as r:
            assert r.status == 404
    async with grpc.aio.insecure_channel(grpc_target(server)) as channel:
        with pytest.raises(ApiError):
            await GrpcApi(channel).call("PushTags", tags=[], data=b"x")
    m = await scrape(server)
    assert series(m, "im_pushes_total") == {
        L(api="http", method="PushUser", kind="user", outcome="invalid_argument"): 1,
        L(api="http", method="PushUser", kind="user", outcome="not_found"): 1,
        L(api="http", method="PushStream", kind="broadcast", outcome="ok"): 1,
        L(api="http", method="PushStream", kind="none", outcome="invalid_argument"): 2,
        L(api="grpc", method="PushTags", kind="tags", outcome="invalid_argument"): 1,
    }


async def test_embedded_pushes_are_counted_once(make_server: MakeServer, connect: Connect) -> None:
    server = await make_server(names=("prometheus",))
    await connect(server, "alice")
    await server.push(["alice", "bob"], b"x")
    server.push_tags(["room"], b"x")
    with pytest.raises(Exception, match="not online"):
        await server.push_one("bob", b"x")  # push_one calls push: one call counted
    m = await scrape(server)
    assert series(m, "im_pushes_total") == {
        L(api="embedded", method="push", kind="users", outcome="ok"): 1,
        L(api="embedded", method="push_tags", kind="tags", outcome="ok"): 1,
        L(api="embedded", method="push_one", kind="user", outcome="not_found"): 1,
    }


async def test_a_slow_consumer_is_counted(make_server: MakeServer) -> None:
    server = await make_server(names=("prometheus",), client_buffer=4, client_buffer_bytes=1 << 18)
    port = int(http_base(server).rsplit(":", 1)[1])
    # A client that completes the upgrade and then never reads (as in test_push).
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /conn?token=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    try:
        await eventually(lambda: server.local.local_count() == 1)
        for _ in range(2000):
            if (await server.push("slow", b"y" * 32 * 1024)).missing:
                break
            await asyncio.sleep(0)  # let the outbox write
        m = await settled(server, disconnects=1)
    finally:
        sock.close()
    assert m[("im_disconnects_total", closed("4001", "slow_consumer"))] == 1
    assert value(m, "im_connections", transport="websocket", codec="json") == 0


async def test_metrics_is_not_served_without_the_plugin(make_server: MakeServer) -> None:
    server = await make_server()
    async with aiohttp.ClientSession() as session:
        async with session.get(http_base(server) + "/metrics") as response:
            assert response.status == 404


def test_a_missing_dependency_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "im_plugins.prometheus", raising=False)
    with pytest.raises(PluginError, match="cannot load plugin 'prometheus'"):
        get_plugin_manager(["prometheus"], autoload=False)


@pytest.fixture
async def redis_node(make_server: MakeServer) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    require_broker("redis")
    prefix = new_prefix()

    async def node(**kw: Any) -> Server:
        return await make_server(
            broker="redis", plugin=broker_options("redis", prefix), names=("prometheus",), **kw
        )

    yield node
    await cleanup("redis", prefix)


async def test_a_cluster_node_reports_its_broker(
    redis_node: Callable[..., Awaitable[Server]], connect: Connect
) -> None:
    one, two = await redis_node(), await redis_node()
    await connect(two, "bob")
    await one.push_one("bob", b"through redis")  # presence lookup, then a peer request

    async def beat_since() -> bool:  # the heartbeat (every presence_ttl / 3) is counted too
        m = await scrape(one)
        return value(m, "im_broker_round_trip_seconds_count", broker="redis", op="heartbeat") > 0

    await eventually(beat_since)
    m = await scrape(one)
    assert value(m, "im_cluster_nodes") == 2
    assert value(m, "im_broker_up", broker="redis") == 1
    trips = series(m, "im_broker_round_trip_seconds_count")
    ops = {dict(labels)["op"] for labels, n in trips.items() if n}
    assert {"presence_lookup", "peer_pushes", "heartbeat", "publish_state"} <= ops
    assert all(dict(labels)["broker"] == "redis" for labels in trips)
    errors = series(m, "im_broker_errors_total")
    assert set(errors) == set(trips) and not any(errors.values())
    assert value(m, "im_online_users") == 1


def dashboard_metrics() -> set[str]:
    """The metric names every PromQL expression of the dashboard queries."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", ())]
    assert len(exprs) >= 10
    names = {n for e in exprs for n in re.findall(r"\b(?:im|process)_[a-z_]+\b", e)}
    return names


async def test_every_dashboard_metric_is_in_a_scrape(
    redis_node: Callable[..., Awaitable[Server]], connect: Connect
) -> None:
    server = await redis_node(plugins=(DenyMallory(),))
    await known_sequence(server, connect)
    m = await settled(server, disconnects=2)
    scraped = {name for name, _ in m}
    wanted = dashboard_metrics()
    assert wanted - scraped == set()
