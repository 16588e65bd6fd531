"""Nodes of one machine send each other requests over Unix sockets in a shared
directory (``--node-links``, set by ``im-run --workers``), not through the broker;
whatever a link cannot reach goes through the broker as before (docs/cluster.md,
"Links between the nodes of one machine")."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from im_client import Client
from im_core import Server
from im_core.errors import Unavailable
from im_plugins.cluster.links import HEADER, MAX_FRAME

from .cluster import BrokerProcess, broker_options, new_prefix
from .conftest import MakeServer
from .test_cluster import visible
from .test_cluster_failures import Connect, broker, own_broker, two_nodes

__all__ = ["broker", "own_broker"]  # fixtures, parametrized over the brokers


async def routed(node: Server, bob: Client) -> None:
    """A push from ``node`` reaches bob on another node: ``node`` learns his route."""
    assert (await node.push("bob", b"one")).missing == ()
    assert (await bob.receive()).data == b"one"


@pytest.fixture
def links() -> Iterator[Path]:
    # Not under pytest's tmp_path: a Unix socket's path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="im-links-") as directory:
        yield Path(directory)


async def test_a_push_to_a_node_of_this_machine_does_not_need_the_broker(
    broker: str,
    own_broker: BrokerProcess,
    make_server: MakeServer,
    connect: Connect,
    links: Path,
) -> None:
    a, b, _, bob = await two_nodes(broker, own_broker, make_server, connect, node_links=str(links))
    assert sorted(os.listdir(links)) == sorted(f"{n.node_id}.sock" for n in (a, b))
    await routed(a, bob)
    with own_broker.stalled():  # the broker answers nothing now
        for i in range(3):
            assert (await a.push("bob", b"%d" % i)).missing == ()
        assert [(await bob.receive()).data for _ in range(3)] == [b"0", b"1", b"2"]
        with pytest.raises(Unavailable):  # a user b has not looked up needs the broker
            await b.push("alice", b"lookup")


async def test_without_a_shared_directory_requests_go_through_the_broker(
    broker: str, own_broker: BrokerProcess, make_server: MakeServer, connect: Connect
) -> None:
    # Without links the same stall fails the push: it is the link that carried it.
    a, _, _, bob = await two_nodes(broker, own_broker, make_server, connect)
    await routed(a, bob)
    with own_broker.stalled(), pytest.raises(Unavailable):
        await a.push("bob", b"two")  # not confirmed, and bob cannot be looked up


async def test_nodes_elsewhere_or_gone_are_asked_through_the_broker(
    broker: str,
    own_broker: BrokerProcess,
    make_server: MakeServer,
    connect: Connect,
    links: Path,
) -> None:
    opts = broker_options(broker, new_prefix(), own_broker.url, broker_timeout=0.5)
    here, elsewhere = links / "here", links / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    a = await make_server(broker=broker, plugin={**opts, "node_links": str(here)})
    b = await make_server(broker=broker, plugin={**opts, "node_links": str(here)})
    c = await make_server(broker=broker, plugin={**opts, "node_links": str(elsewhere)})
    alice, bob = await connect(a, "alice"), await connect(b, "bob")
    carol = await connect(c, "carol")
    await visible(a, "alice", "bob", "carol")
    # c's socket is not in a's directory (another machine): the broker carries it.
    assert (await a.push("carol", b"to c")).missing == ()
    assert (await c.push("alice", b"to a")).missing == ()
    assert (await carol.receive()).data == b"to c"
    assert (await alice.receive()).data == b"to a"

    await routed(a, bob)
    gone = b.node_id
    await b.stop()
    assert f"{gone}.sock" not in os.listdir(here)  # removed when b stopped
    # A dead node's socket file that nobody listens on: refused, so the broker is
    # asked, and it says the node is gone.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(here / f"{gone}.sock"))
    stale.close()
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert (await a.push("bob", b"two")).missing == ("bob",)
    assert loop.time() - start < 0.5


async def test_a_link_refuses_oversized_frames_and_answers_garbage_with_nothing(
    broker: str,
    own_broker: BrokerProcess,
    make_server: MakeServer,
    connect: Connect,
    links: Path,
) -> None:
    """Whatever connects to a node's socket (only this user can: the directory is
    private) gets no more than it sends: a frame header over ``MAX_FRAME`` closes
    the link at once, an unreadable request gets an empty answer, and the node
    keeps serving."""
    a, b, _, bob = await two_nodes(broker, own_broker, make_server, connect, node_links=str(links))
    path = str(links / f"{b.node_id}.sock")
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(HEADER.pack(MAX_FRAME + 1, 1))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing buffered
    writer.close()

    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(HEADER.pack(5, 7) + b"junk!")
    size, rid = HEADER.unpack(await asyncio.wait_for(reader.readexactly(HEADER.size), 5))
    assert (size, rid) == (0, 7)
    writer.close()
    await routed(a, bob)  # b still answers its peers
