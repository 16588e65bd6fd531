"""TLS (docs/operations.md, "TLS"): wss:// and HTTPS on the HTTP port, TLS on
gRPC, mutual TLS for the push APIs, and bad option values, with a CA and
certificates made here (trustme)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from im_client import Client, ConnectError
from im_core import CloseCode, Server, hookimpl

from .api_clients import ApiError, GrpcApi, HttpApi, http_base
from .conftest import MakeServer, eventually, http_url, ws_url
from .test_cli import run_cli, start_node
from .test_sse import Stream


@dataclass(frozen=True)
class Pki:
    """A CA, the server's certificate and key files, and clients' certificates."""

    ca: trustme.CA
    folder: Path
    cert: str  # the server's certificate chain (PEM)
    key: str  # its private key (PEM)
    ca_file: str  # the CA's certificate: what clients trust, and --tls-client-ca

    def trusting(self, *, client_cert: bool = False) -> ssl.SSLContext:
        """A client context that trusts the CA (and presents a certificate it signed)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if client_cert:
            self.ca.issue_cert("backend.example").configure_cert(context)
        return context

    def grpc(self, *, client_cert: bool = False) -> grpc.ChannelCredentials:
        if not client_cert:
            return grpc.ssl_channel_credentials(self.ca.cert_pem.bytes())
        backend = self.ca.issue_cert("backend.example")
        return grpc.ssl_channel_credentials(
            self.ca.cert_pem.bytes(),
            private_key=backend.private_key_pem.bytes(),
            certificate_chain=b"".join(pem.bytes() for pem in backend.cert_chain_pems),
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return Pki(
        ca, folder, str(folder / "cert.pem"), str(folder / "key.pem"), str(folder / "ca.pem")
    )


async def tls_server(make_server: MakeServer, pki: Pki, **kw: object) -> Server:
    return await make_server(tls_cert=pki.cert, tls_key=pki.key, **kw)


def https(context: ssl.SSLContext | bool = True) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


def wss_url(server: Server) -> str:
    return ws_url(server).replace("https://", "wss://")


# --- wss://, HTTPS and gRPC over TLS --------------------------------------------------


async def test_wss_client_receives_a_push_made_over_https(make_server, pki, connect) -> None:
    server = await tls_server(make_server, pki)
    client = await connect(server, "alice", ssl=pki.trusting())
    assert client.url.startswith("https://")
    async with (
        Client(wss_url(server), "bob", ssl=pki.trusting()) as bob,
        https(pki.trusting()) as session,
    ):
        api = HttpApi(session, http_base(server))
        assert (await api.call("PushUser", user="alice", data=b"over tls"))["missing"] == []
        await api.call("PushUser", user="bob", data=b"wss")
        assert (await client.receive()).data == b"over tls"
        assert (await bob.receive()).data == b"wss"
        async with session.get(http_url(server, "/health")) as resp:
            assert resp.status == 200


async def test_sse_stream_over_https(make_server, pki) -> None:
    server = await tls_server(make_server, pki)
    async with https(pki.trusting()) as session:
        async with session.get(http_url(server, "/sse"), params={"token": "ann"}) as resp:
            assert resp.status == 200
            stream = Stream(resp)
            assert (await stream.next())["event"] == "session"
            await HttpApi(session, http_base(server)).call("PushUser", user="ann", text="hi")
            _, data = await stream.message()
            assert data["msg"] == "aGk="  # b"hi"


async def test_upgrade_on_a_reused_tls_connection(make_server, pki) -> None:
    """An upgrade after a request on the same TLS connection goes through aiohttp's
    route, which takes the encrypted socket over."""
    server = await tls_server(make_server, pki)
    reused: list[object] = []
    trace = aiohttp.TraceConfig()

    async def on_reuse(*args: object) -> None:
        reused.append(args)

    trace.on_connection_reuseconn.append(on_reuse)
    connector = aiohttp.TCPConnector(ssl=pki.trusting(), limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        async with session.get(http_url(server, "/ping")) as resp:
            assert resp.status == 200
            await resp.read()
        ws = await session.ws_connect(http_url(server, "/conn"), params={"token": "carol"})
        assert reused, "the upgrade did not reuse the keep-alive connection"
        async with https(pki.trusting()) as other:  # the one connection is the socket's
            await HttpApi(other, http_base(server)).call("PushUser", user="carol", text="k")
        msg = await ws.receive(timeout=5)
        assert orjson.loads(msg.data)["msg"] == "aw=="  # b"k"
        await ws.close()


async def test_grpc_over_tls(make_server, pki, channel, connect) -> None:
    server = await tls_server(make_server, pki)
    client = await connect(server, "dave", ssl=pki.trusting())
    api = GrpcApi(channel(server, pki.grpc()))
    assert (await api.call("PushUser", user="dave", data=b"rpc"))["missing"] == []
    assert (await client.receive()).data == b"rpc"


async def test_request_sent_with_the_end_of_the_handshake(make_server, pki) -> None:
    """A client may send its request in the same packet as its last handshake
    message: the front reads it as if it came alone."""
    server = await tls_server(make_server, pki)
    port = next(t.port for t in server.transports if t.name == "http")
    request = b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await asyncio.to_thread(_request_with_finished, port, pki.trusting(), request)
    assert answer.startswith(b"HTTP/1.1 200"), answer


def _request_with_finished(port: int, context: ssl.SSLContext, request: bytes) -> bytes:
    """Handshake by hand, then write the client's Finished and ``request`` at once."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536) or b"")
        tls.write(request)
        sock.sendall(outgoing.read())  # Finished + the request, one write
        answer = b""
        while True:
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    return answer
                incoming.write(data)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return answer
            if not chunk:
                return answer
            answer += chunk


async def test_a_tls_client_that_stops_reading_is_closed_as_a_slow_consumer(
    make_server, pki
) -> None:
    """The backlog bound holds over TLS too (the TLS layer's buffer is counted)."""
    closed: list[int] = []

    class Watch:
        @hookimpl
        def im_disconnected(self, code: int) -> None:
            closed.append(code)

    server = await tls_server(
        make_server, pki, plugins=(Watch(),), client_buffer=4, client_buffer_bytes=256 * 1024
    )
    port = next(t.port for t in server.transports if t.name == "http")
    sock = await asyncio.to_thread(_upgraded_and_silent, port, pki.trusting())
    try:
        await eventually(lambda: server.local.local_count() == 1)
        missing: tuple[str, ...] = ()
        for _ in range(2000):
            missing = (await server.push("slow", b"y" * 32 * 1024)).missing
            if missing:
                break
            await asyncio.sleep(0)  # let the outbox write
        assert missing == ("slow",)
        await eventually(lambda: closed == [CloseCode.SLOW_CONSUMER])
    finally:
        sock.close()


def _upgraded_and_silent(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS client that completes the upgrade and then never reads."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", port))
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(
        b"GET /conn?token=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return sock


# --- refusals ----------------------------------------------------------------------------


async def connects(server: Server, pki: Pki) -> bool:
    try:
        async with Client(ws_url(server), "probe", ssl=pki.trusting()):
            return True
    except ConnectError:
        return False


async def until_connects(server: Server, pki: Pki) -> None:
    for _ in range(100):
        if await connects(server, pki):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no place at the gate came free")


async def test_a_client_that_does_not_trust_the_certificate_is_refused(
    make_server, pki, channel
) -> None:
    # One socket at a time: the refused handshakes must give their place back.
    server = await tls_server(make_server, pki, max_connections=1)
    for _ in range(3):
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await Client(ws_url(server), "eve").connect()  # the system's CAs
    async with https() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await HttpApi(session, http_base(server)).call("Ping")
    stranger = grpc.ssl_channel_credentials(trustme.CA().cert_pem.bytes())
    with pytest.raises(ApiError) as refused:
        await GrpcApi(channel(server, stranger)).call("Ping")
    assert refused.value.code == "unavailable"
    await until_connects(server, pki)


async def test_plain_http_on_a_tls_port_gets_nothing(make_server, pki) -> None:
    server = await tls_server(make_server, pki)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(http_url(server, "/ping").replace("https://", "http://"))


async def test_gate_refusal_is_answered_over_tls(make_server, pki, connect) -> None:
    server = await tls_server(make_server, pki, max_connections=1)
    await connect(server, "first", ssl=pki.trusting())
    with pytest.raises(ConnectError) as refused:
        await Client(ws_url(server), "second", ssl=pki.trusting()).connect()
    assert refused.value.status == 503


async def test_a_silent_socket_is_closed_within_idle_timeout(make_server, pki) -> None:
    """No handshake: closed after idle_timeout, and the gate's one place is free."""
    server = await tls_server(make_server, pki, max_connections=1, idle_timeout=0.3)
    port = next(t.port for t in server.transports if t.name == "http")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    finally:
        writer.close()
    await until_connects(server, pki)
    await until_connects(server, pki)  # a closed wss:// connection gave its place back


# --- mutual TLS ----------------------------------------------------------------------


async def test_mutual_tls_http_api_requires_a_client_certificate(make_server, pki) -> None:
    server = await tls_server(make_server, pki, tls_client_ca=pki.ca_file)
    # Users need no certificate: browsers cannot present one.
    async with Client(ws_url(server), "fay", ssl=pki.trusting()) as fay:
        async with https(pki.trusting()) as session:
            with pytest.raises(ApiError) as refused:
                await HttpApi(session, http_base(server)).call("PushUser", user="fay", text="x")
            assert refused.value.status == 401
            assert "client certificate" in refused.value.message
            async with session.get(http_url(server, "/api/v1/openapi.json")) as resp:
                assert resp.status == 200  # open, as with the API key
        async with https(pki.trusting(client_cert=True)) as session:
            api = HttpApi(session, http_base(server))
            assert (await api.call("PushUser", user="fay", text="ok"))["missing"] == []
        assert (await fay.receive()).data == b"ok"
    # A certificate from another CA fails the handshake.
    other = pki.trusting()
    trustme.CA().issue_cert("intruder.example").configure_cert(other)
    async with https(other) as session:
        with pytest.raises(aiohttp.ClientError):
            await HttpApi(session, http_base(server)).call("Ping")


async def test_mutual_tls_grpc_requires_a_client_certificate(make_server, pki, channel) -> None:
    server = await tls_server(make_server, pki, tls_client_ca=pki.ca_file)
    with pytest.raises(ApiError) as refused:
        await GrpcApi(channel(server, pki.grpc())).call("Ping")
    assert refused.value.code == "unavailable"
    assert await GrpcApi(channel(server, pki.grpc(client_cert=True))).call("Ping") is not None


async def test_im_ctl_under_mutual_tls(make_server, pki) -> None:
    from .test_ctl import ctl

    server = await tls_server(make_server, pki, tls_client_ca=pki.ca_file)
    backend = pki.ca.issue_cert("im-ctl.example")
    cert = pki.folder / "ctl.pem"
    cert.write_bytes(
        backend.private_key_pem.bytes() + b"".join(p.bytes() for p in backend.cert_chain_pems)
    )
    url = http_base(server).removesuffix("/api/v1")
    ok = await ctl("stats", "--json", "--cacert", pki.ca_file, "--cert", str(cert), url=url)
    assert ok.code == 0 and ok.json()["node_id"] == server.node_id, ok.err
    refused = await ctl("stats", "--cacert", pki.ca_file, url=url)  # no client certificate
    assert refused.code == 3 and "client certificate" in refused.err
    untrusted = await ctl("stats", url=url)  # the system does not trust the test CA
    assert untrusted.code == 4
    missing = await ctl("stats", "--cacert", str(pki.folder / "nope.pem"), url=url)
    assert missing.code == 2 and missing.err.startswith("im-ctl: --cacert")


# --- options ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(pki: Pki) -> dict[str, str]:
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(pki.folder / "other-key.pem"))
    (pki.folder / "junk.pem").write_text("not a certificate\n")
    key = serialization.load_pem_private_key(Path(pki.key).read_bytes(), None)
    (pki.folder / "encrypted-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return {
        "encrypted_key": str(pki.folder / "encrypted-key.pem"),
        "cert": pki.cert,
        "key": pki.key,
        "other_key": str(pki.folder / "other-key.pem"),
        "junk": str(pki.folder / "junk.pem"),
        "missing": str(pki.folder / "missing.pem"),
        "ca": pki.ca_file,
    }


@pytest.mark.parametrize(
    ("args", "option", "says"),
    [
        (["--tls-cert", "missing", "--tls-key", "key"], "--tls-cert", "cannot read"),
        (["--tls-cert", "cert", "--tls-key", "missing"], "--tls-key", "cannot read"),
        (["--tls-cert", "cert", "--tls-key", "other_key"], "--tls-key", "does not match"),
        (["--tls-cert", "junk", "--tls-key", "key"], "--tls-cert", "no PEM certificate"),
        (["--tls-cert", "cert", "--tls-key", "junk"], "--tls-key", "no PEM private key"),
        (["--tls-cert", "cert", "--tls-key", "encrypted_key"], "--tls-key", "encrypted"),
        (["--tls-cert", "cert"], "--tls-key", "required"),
        (["--tls-client-ca", "ca"], "--tls-client-ca", "needs --tls-cert"),
        (
            ["--tls-cert", "cert", "--tls-key", "key", "--tls-client-ca", "junk"],
            "--tls-client-ca",
            "no PEM certificate",
        ),
    ],
)
def test_bad_tls_option_exits_2_with_one_line(bad_files, args, option, says) -> None:
    argv = [bad_files.get(a, a) for a in args]
    done = run_cli(*argv, "--http-port", "0", "--rpc-port", "0")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert option in lines[0] and says in lines[0], lines[0]


async def test_im_run_serves_tls_and_mutual_tls(pki) -> None:
    """The command line, on its own event loop (uvloop where installed)."""
    proc, port, line = await start_node(
        "--tls-cert", pki.cert, "--tls-key", pki.key, "--tls-client-ca", pki.ca_file
    )
    try:
        rpc_port = int(re.search(r"grpc :(\d+)", line).group(1))  # type: ignore[union-attr]
        base = f"https://127.0.0.1:{port}"
        async with Client(f"wss://127.0.0.1:{port}/conn", "gus", ssl=pki.trusting()) as gus:
            async with https(pki.trusting()) as session:
                with pytest.raises(ApiError) as refused:
                    await HttpApi(session, base).call("PushUser", user="gus", text="no")
                assert refused.value.status == 401
                async with session.get(f"{base}/sse", params={"token": "hal"}) as resp:
                    assert (await Stream(resp).next())["event"] == "session"
            async with https(pki.trusting(client_cert=True)) as session:
                await HttpApi(session, base).call("PushUser", user="gus", text="https")
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{rpc_port}", pki.grpc(client_cert=True)
            ) as ch:
                await GrpcApi(ch).call("PushUser", user="gus", data=b"grpc")
            assert [(await gus.receive()).data for _ in range(2)] == [b"https", b"grpc"]
            proc.send_signal(signal.SIGTERM)
            assert await gus.wait_closed() == CloseCode.GOING_AWAY
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
