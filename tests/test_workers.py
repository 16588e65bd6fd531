"""``im-run --workers 2`` with no broker: two node processes sharing the ports over
an embedded NATS, under a supervisor that restarts a killed worker and drains both
on SIGTERM. Everything is observed over the wire and in the supervisor's log."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest

from im_client import Client
from tests.api_clients import GrpcApi, HttpApi

pytestmark = pytest.mark.skipif(
    shutil.which("nats-server") is None, reason="nats-server is not on PATH"
)

USERS = [f"u{i}" for i in range(40)]


class Supervised:
    """``im-run --workers 2`` as a subprocess; its log lines kept as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            async with self._new:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._new.notify_all()

    async def wait_for(self, pattern: str, after: int = 0, timeout: float = 15.0) -> re.Match[str]:
        """The first log line from index ``after`` on matching ``pattern``."""

        def found() -> re.Match[str] | None:
            for line in self.lines[after:]:
                match = re.search(pattern, line)
                if match:
                    return match
            return None

        async with self._new:
            await asyncio.wait_for(self._new.wait_for(found), timeout)
        match = found()
        assert match is not None
        return match

    def pids(self) -> dict[int, int]:
        """Worker index -> pid of its latest start."""
        out = {}
        for line in self.lines:
            match = re.search(r"worker (\d+) started \(pid (\d+)\)", line)
            if match:
                out[int(match[1])] = int(match[2])
        return out


async def start(*args: str) -> Supervised:
    cmd = [sys.executable, "-m", "im_core.cli", "--host", "127.0.0.1", *args]
    env = {**os.environ, "IM_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=subprocess.PIPE)
    return Supervised(proc)


@pytest.fixture
async def workers() -> AsyncIterator[Supervised]:
    sup = await start(
        "--workers", "2", "--http-port", "0", "--rpc-port", "0",
        "--presence-ttl", "1.5", "--drain-timeout", "1",
        # A JetStream call slower than the default 1 s on a loaded machine is an
        # outage (a login accepted locally, its duplicate elsewhere not replaced
        # until the broker answers): not what this test is about.
        "--broker-timeout", "5",
    )  # fmt: skip
    try:
        yield sup
    finally:
        if sup.proc.returncode is None:
            sup.proc.kill()  # the workers and NATS get SIGTERM with it (PDEATHSIG)
            await sup.proc.wait()
        sup._reader.cancel()


async def fresh_get(base: str, path: str) -> Any:
    """GET on a new TCP connection, so the kernel may pick either worker."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.get(base + path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except (AssertionError, aiohttp.ClientError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def node_of(base: str, user: str) -> int:
    presence = await fresh_get(base, f"/api/v1/presence?user={user}")
    assert presence["online"], presence
    return int(presence["node_id"])


async def closed(client: Client) -> bool:
    try:
        await client.wait_closed(3)
    except TimeoutError:
        return False
    return True


async def connect(ws: str, user: str) -> Client:
    client = Client(f"{ws}/conn", token=user)
    await client.connect()
    return client


async def test_two_workers_share_ports_users_counts_restart_and_drain(
    workers: Supervised,
) -> None:
    sup = workers
    http_port = int((await sup.wait_for(r"sharing .*http_port :(\d+)"))[1])
    rpc_port = int((await sup.wait_for(r"sharing .*rpc_port :(\d+)"))[1])
    base, ws = f"http://127.0.0.1:{http_port}", f"ws://127.0.0.1:{http_port}"
    embedded = await sup.wait_for(r"embedded NATS \(.*, pid (\d+)\)")
    await sup.wait_for(r"worker 1 started")
    first = sup.pids()
    assert sorted(first) == [0, 1]

    async def two_nodes() -> list[int]:
        nodes = (await fresh_get(base, "/api/v1/nodes"))["nodes"]
        assert len(nodes) == 2, nodes
        return [n["node_id"] for n in nodes]

    node_ids = await eventually(two_nodes, 20)

    # Connections land on both workers.
    clients = {user: await connect(ws, user) for user in USERS}
    landed = {user: await eventually(lambda u=user: node_of(base, u)) for user in USERS}
    assert set(landed.values()) == set(node_ids)

    # A push through either port reaches users on both workers (so the other one's).
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{rpc_port}")
    async with aiohttp.ClientSession() as session:
        for api, text in ((HttpApi(session, base), b"via http"), (GrpcApi(channel), b"via grpc")):
            reply = await api.call("PushUsers", users=USERS, data=text)
            assert reply.get("missing", []) == []
            for user in USERS:
                assert (await clients[user].receive(5)).data == text

    # Counts are the cluster's, whichever worker answers.
    for _ in range(6):
        stats = await fresh_get(base, "/api/v1/stats")
        assert stats["online"] == len(USERS)
    nodes = (await fresh_get(base, "/api/v1/nodes"))["nodes"]
    assert sum(n["users"] for n in nodes) == len(USERS)

    # Duplicate login across workers: log "dup" in again until the new connection
    # lands on the other worker; the old one is replaced (4501) all the same.
    old = await connect(ws, "dup")
    old_node = await eventually(lambda: node_of(base, "dup"))
    for _ in range(30):
        new = await connect(ws, "dup")
        assert await old.wait_closed(5) == 4501
        new_node = await eventually(lambda: node_of(base, "dup"))
        old, crossed = new, new_node != old_node
        old_node = new_node
        if crossed:
            break
    else:
        pytest.fail("30 logins of one user never landed on the other worker")
    await old.close()

    # A killed worker is restarted (a new pid, logged); its users reconnect.
    mark = len(sup.lines)
    os.kill(first[0], signal.SIGKILL)
    await sup.wait_for(rf"worker 0 \(pid {first[0]}\) exited with signal SIGKILL", mark)
    restarted = await sup.wait_for(r"worker 0 started \(pid (\d+)\)", mark)
    assert int(restarted[1]) != first[0]
    gone = await asyncio.gather(*(closed(clients[u]) for u in USERS))
    dropped = [u for u, g in zip(USERS, gone, strict=True) if g]
    # Exactly the users of one node (the killed worker's) lost their connection.
    assert len({landed[u] for u in dropped}) == 1
    assert dropped == [u for u in USERS if landed[u] == landed[dropped[0]]]
    for user in dropped:
        clients[user] = await connect(ws, user)

    async def all_back() -> None:
        await two_nodes()
        assert (await fresh_get(base, "/api/v1/stats"))["online"] == len(USERS)

    await eventually(all_back, 20)
    async with aiohttp.ClientSession() as session:
        reply = await HttpApi(session, base).call("PushUsers", users=USERS, data=b"again")
    assert reply.get("missing", []) == []
    for user in USERS:
        assert (await clients[user].receive(5)).data == b"again"

    # SIGTERM drains both workers: every client gets 1001, the supervisor exits 0
    # and the embedded NATS is gone with it.
    sup.proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(c.wait_closed(15) for c in clients.values()))
    assert set(codes) == {1001}
    assert await asyncio.wait_for(sup.proc.wait(), 20) == 0
    drained = [line for line in sup.lines if re.search(r"worker \d .* exited with status 0", line)]
    assert len(drained) == 2  # each worker drained and exited 0
    with pytest.raises(ProcessLookupError):
        os.kill(int(embedded[1]), 0)
    await channel.close()


async def run_refused(*args: str) -> tuple[int, str]:
    sup = await start(*args)
    status = await asyncio.wait_for(sup.proc.wait(), 15)
    await sup._reader
    return status, "\n".join(sup.lines)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--broker", "memory"], "--broker memory keeps each worker's users to itself"),
        (["--node-id", "3"], "--node-id cannot name several workers"),
        (["--nats-url", "nats://127.0.0.1:4222"], "a broker URL needs --broker"),
        (["--workers", "-1"], "workers must be >= 0"),
    ],
)
async def test_combinations_that_cannot_work_are_one_line(args: list[str], says: str) -> None:
    status, out = await run_refused("--workers", "2", *args)
    assert status == 2
    assert out.count("\n") == 0 and out.startswith("im-run: error:") and says in out, out


async def test_a_worker_that_is_misconfigured_stops_everything_with_status_2() -> None:
    # An unknown codec passes the supervisor: only a starting node can check it.
    status, out = await run_refused("--workers", "2", "--http-port", "0", "--rpc-port", "0",
                                    "--codec", "nonesuch")  # fmt: skip
    assert status == 2, out
    assert "exited with status 2 (misconfiguration): stopping" in out
    assert "restarting" not in out



@pytest.mark.parametrize("broker", ["redis", "nats"])
async def test_workers_join_an_external_broker_with_other_machines(broker: str) -> None:
    """``--workers 2 --broker redis|nats``: no embedded NATS; the two workers and a
    node started on its own (another machine's, here on other ports) are one cluster."""
    prefix = f"wk{os.getpid()}x{broker}"
    sup = await start(
        "--workers", "2", "--http-port", "0", "--rpc-port", "0",
        "--broker", broker, "--broker-prefix", prefix, "--drain-timeout", "1",
    )  # fmt: skip
    other = await start(
        "--http-port", "0", "--rpc-port", "0",
        "--broker", broker, "--broker-prefix", prefix, "--log-level", "INFO",
    )  # fmt: skip
    clients: list[Client] = []
    try:
        http_port = int((await sup.wait_for(r"sharing .*http_port :(\d+)"))[1])
        await sup.wait_for(r"worker 1 started")
        base, ws = f"http://127.0.0.1:{http_port}", f"ws://127.0.0.1:{http_port}"
        other_port = int((await other.wait_for(r"serving \(grpc :\d+, http :(\d+)\)"))[1])
        other_base = f"http://127.0.0.1:{other_port}"

        async def three_nodes() -> None:
            nodes = (await fresh_get(base, "/api/v1/nodes"))["nodes"]
            assert len(nodes) == 3, nodes

        await eventually(three_nodes, 20)
        assert not any("embedded NATS" in line for line in sup.lines)
        users = ["o0", "o1", "o2"]
        clients = [await connect(f"ws://127.0.0.1:{other_port}", u) for u in users]
        landed = {u: await eventually(lambda u=u: node_of(base, u)) for u in users}
        for i in range(60):  # until the kernel has handed connections to both workers
            users.append(f"w{i}")
            clients.append(await connect(ws, users[-1]))
            landed[users[-1]] = await eventually(lambda: node_of(base, users[-1]))
            if len(set(landed.values())) == 3 and i >= 7:
                break
        assert len(set(landed.values())) == 3  # both workers and the other node
        for entry, text in ((base, b"via the workers"), (other_base, b"via the other")):
            async with aiohttp.ClientSession() as session:
                reply = await HttpApi(session, entry).call("PushUsers", users=users, data=text)
            assert reply.get("missing", []) == []
            for client in clients:
                assert (await client.receive(5)).data == text

        async def all_online() -> None:  # NATS: each node's count is published ~20 ms late
            assert (await fresh_get(other_base, "/api/v1/stats"))["online"] == len(users)

        await eventually(all_online)
    finally:
        for client in clients:
            await client.close()
        for proc in (sup, other):
            if proc.proc.returncode is None:
                proc.proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.proc.wait(), 20)
            proc._reader.cancel()


async def test_a_killed_embedded_nats_is_restarted_and_the_cluster_recovers(
    workers: Supervised,
) -> None:
    """The supervisor watches its NATS: killed, it comes back on the same port; the
    workers reconnect and register their users again, and pushes cross workers."""
    sup = workers
    http_port = int((await sup.wait_for(r"sharing .*http_port :(\d+)"))[1])
    base, ws = f"http://127.0.0.1:{http_port}", f"ws://127.0.0.1:{http_port}"
    embedded = await sup.wait_for(r"embedded NATS \(.*, pid (\d+)\) on 127\.0\.0\.1:(\d+)")
    await sup.wait_for(r"worker 1 started")

    async def both_workers() -> None:
        assert len((await fresh_get(base, "/api/v1/nodes"))["nodes"]) == 2

    await eventually(both_workers, 20)
    users = USERS[:20]
    clients = {user: await connect(ws, user) for user in users}
    landed = {user: await eventually(lambda u=user: node_of(base, u)) for user in users}
    assert len(set(landed.values())) == 2

    mark = len(sup.lines)
    os.kill(int(embedded[1]), signal.SIGKILL)
    await sup.wait_for(r"embedded NATS \(pid \d+\) exited with signal SIGKILL: restarting", mark)
    again = await sup.wait_for(r"embedded NATS \(.*, pid (\d+)\) on 127\.0\.0\.1:(\d+)", mark)
    assert again[2] == embedded[2] and again[1] != embedded[1]

    async def recovered() -> None:
        await both_workers()
        assert (await fresh_get(base, "/api/v1/stats"))["online"] == len(users)
        async with aiohttp.ClientSession() as session:
            reply = await HttpApi(session, base).call("PushUsers", users=users, data=b"back")
        assert reply.get("missing", []) == [], reply

    await eventually(recovered, 30)
    for user in users:  # every user still connected, on either worker, gets it
        assert (await clients[user].receive(5)).data == b"back"
        await clients[user].close()
