"""What a caller may send the push APIs and what it gets past each limit: body
sizes and times, the streamed push_stream reply, credentials, quiet logs."""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
from collections.abc import AsyncIterator

import grpc
import orjson
import pytest

from im_core import Server
from im_plugins.http.api import PREFIX, body_limit
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

from .api_clients import ApiError, http_base
from .test_api import nothing, online

KEY = "s3cret"


def http_port(server: Server) -> int:
    return next(t.port for t in server.transports if t.name == "http")


async def raw_request(server: Server, data: bytes, wait: float = 5.0) -> tuple[int, dict]:
    """Send ``data`` as it is; the status and JSON body of the first response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port(server))
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), wait)
        return int(lines[0].split()[1]), orjson.loads(body)
    finally:
        writer.close()


def post_head(path: str, **headers: str | int) -> bytes:
    lines = [f"POST {PREFIX}{path} HTTP/1.1", "Host: im"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# --- body limits -------------------------------------------------------------------


async def test_payload_up_to_max_message_size_is_accepted_by_both_apis(
    server, api, connect
) -> None:
    alice = await connect(server, "alice")
    await online(server, alice)
    client = api(server)
    big = b"x" * 1_000_000  # over aiohttp's default body limit once in base64
    assert (await client.call("PushUser", user="alice", data=big))["sid"] == 0
    assert (await alice.receive()).data == big
    limit = server.options.max_message_size
    reply = await client.call("PushUsers", users=["ghost"], data=b"y" * limit)
    assert reply["missing"] == ["ghost"]  # accepted: nobody to deliver to
    with pytest.raises(ApiError) as err:
        await client.call("PushUsers", users=["alice"], data=b"y" * (limit + 1))
    expected = "payload_too_large" if client.name == "http" else "invalid_argument"
    assert err.value.code == expected and "max_message_size" in err.value.message
    assert await nothing(alice)


async def test_http_body_over_the_limit_is_refused_before_it_is_read(make_server) -> None:
    server = await make_server(max_message_size=1000)
    limit = body_limit(server)
    head = post_head("/push_user", content_length=100 * limit)
    status, reply = await raw_request(server, head)  # the body never comes
    assert (status, reply["error"]["code"]) == (413, "payload_too_large")
    piece = b"x" * (64 << 10)
    chunks = chunk(piece) * (limit // len(piece) + 2)  # over the limit, not ended
    status, reply = await raw_request(
        server, post_head("/push_user", transfer_encoding="chunked") + chunks
    )
    assert (status, reply["error"]["code"]) == (413, "payload_too_large")
    assert f"over {limit} bytes" in reply["error"]["message"]


async def test_http_body_must_arrive_within_body_timeout(make_server, connect) -> None:
    server = await make_server(body_timeout=0.3)
    alice = await connect(server, "alice")
    await online(server, alice)
    started = asyncio.get_running_loop().time()
    status, reply = await raw_request(server, post_head("/push_user", content_length=100) + b"{")
    assert (status, reply["error"]["code"]) == (408, "request_timeout")
    assert "body_timeout" in reply["error"]["message"]
    assert asyncio.get_running_loop().time() - started < 3
    assert await nothing(alice)


# --- push_stream -------------------------------------------------------------------


def stream_url(server: Server) -> str:
    return http_base(server) + PREFIX + "/push_stream"


async def test_push_stream_reply_arrives_while_the_body_is_still_sent(server, session) -> None:
    first_results = asyncio.Event()
    seen_before_the_rest: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"{}\n" * 1000  # no target: one error result each
        try:
            await asyncio.wait_for(first_results.wait(), 5)
        except TimeoutError:
            pass
        seen_before_the_rest.append(first_results.is_set())
        for _ in range(20):
            yield b"{}\n" * 1000

    reply = b""
    async with session.post(stream_url(server), data=body()) as r:
        assert r.status == 200
        while piece := await r.content.readany():
            reply += piece
            first_results.set()
    assert seen_before_the_rest == [True]
    doc = orjson.loads(reply)  # one JSON object, however it was cut
    assert doc["processed"] == 21_000 and "error" not in doc
    assert [result["seq"] for result in doc["results"]] == list(range(21_000))


async def test_push_stream_holds_a_batch_of_results_not_all(server, session) -> None:
    body = b"{}\n" * 100_000  # 100,000 error results, ~10 MB of reply
    received = 0
    tracemalloc.start()
    try:
        async with session.post(stream_url(server), data=body) as r:
            while piece := await r.content.readany():  # read as it comes, kept by nobody
                received += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received > 10_000_000
    assert peak < 20_000_000, peak  # holding all results took 66 MB


async def test_push_stream_stops_reading_while_its_reply_is_not_read(make_server) -> None:
    server = await make_server(max_stream_body=1 << 30)
    results = b"{}\n" * 100_000  # ~10 MB of error results, more than the sockets buffer
    blank = b" " * 1023 + b"\n"  # lines the server skips at once
    mb = blank * 1024
    _, writer = await asyncio.open_connection("127.0.0.1", http_port(server))
    writer.write(post_head("/push_stream", content_length=len(results) + 200 * len(mb)))
    writer.write(results)
    sent = 0
    try:
        for sent in range(200):  # noqa: B007
            writer.write(mb)
            await asyncio.wait_for(writer.drain(), 1.0)
        stalled = False
    except TimeoutError:
        stalled = True
    writer.transport.abort()  # close() would wait to send what the server does not read
    assert stalled and sent < 100, sent  # the server stopped reading the body


async def test_push_stream_body_over_max_stream_body(make_server, connect, session) -> None:
    server = await make_server(max_stream_body=10_000)
    alice = await connect(server, "alice")
    await online(server, alice)
    quiet = b'{"users": ["alice"], "text": "x"}\n'  # no news, no result
    news = b'{"users": ["ghost"], "text": "x"}\n'  # a result (ghost is missing)
    done = 10_000 // len(quiet)  # whole lines within the limit

    async def chunked(line: bytes) -> AsyncIterator[bytes]:
        for _ in range(20_000 // (10 * len(line))):
            yield line * 10

    # Nothing written yet when the limit is crossed: a plain 413 saying what was done.
    async with session.post(stream_url(server), data=chunked(quiet)) as r:
        assert r.status == 413
        reply = await r.json()
    assert reply["error"]["code"] == "payload_too_large"
    assert "max_stream_body" in reply["error"]["message"]
    assert (reply["processed"], reply["results"]) == (done, [])
    assert len([await alice.receive() for _ in range(done)]) == done
    assert await nothing(alice)
    # Results already written: the reply ends with an error entry.
    async with session.post(stream_url(server), data=chunked(news)) as r:
        assert r.status == 200
        reply = await r.json()
    assert reply["processed"] == done and reply["error"]["code"] == "payload_too_large"
    *pushed, last = reply["results"]
    assert [(p["seq"], p["missing"]) for p in pushed] == [(i, ["ghost"]) for i in range(done)]
    assert last == {"seq": done, "error": reply["error"]}
    # A Content-Length over the limit is refused before anything is pushed.
    async with session.post(stream_url(server), data=quiet * 1000) as r:
        assert r.status == 413 and (await r.json())["processed"] == 0
    assert await nothing(alice)


async def test_push_stream_gap_over_body_timeout(make_server, connect, session) -> None:
    server = await make_server(body_timeout=0.3)
    alice = await connect(server, "alice")
    await online(server, alice)

    async def stalled(first: bytes) -> AsyncIterator[bytes]:
        yield first
        await asyncio.sleep(3)
        yield b'{"users": ["alice"], "text": "late"}\n'

    async with session.post(
        stream_url(server), data=stalled(b'{"users": ["alice"], "text": "a"}\n')
    ) as r:
        assert r.status == 408
        reply = await r.json()
    assert reply["error"]["code"] == "request_timeout" and reply["processed"] == 1
    assert (await alice.receive()).data == b"a"
    async with session.post(stream_url(server), data=stalled(b"{}\n")) as r:
        assert r.status == 200  # the error result of line 1 was already sent
        reply = await r.json()
    assert reply["processed"] == 1 and reply["error"]["code"] == "request_timeout"
    assert [result["seq"] for result in reply["results"]] == [0, 1]
    assert reply["results"][1]["error"]["code"] == "request_timeout"
    assert await nothing(alice, wait=0.5)


# --- credentials -------------------------------------------------------------------

# (x-api-key, authorization, accepted): the same rule for both APIs.
CREDENTIALS = [
    (KEY, None, True),
    ("wrong", None, False),
    (None, f"Bearer {KEY}", True),
    (None, "Bearer wrong", False),
    (KEY, "Bearer wrong", True),
    ("wrong", f"Bearer {KEY}", False),  # X-API-Key, when present, decides
    (None, KEY, False),
    (None, None, False),
]


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_one_credential_rule_for_both_apis(make_server, channel, session, transport) -> None:
    server = await make_server(api_key=KEY)
    stub = im_v1_pb2_grpc.ImStub(channel(server))
    for x_api_key, authorization, accepted in CREDENTIALS:
        sent = {"x-api-key": x_api_key, "authorization": authorization}
        headers = {name: value for name, value in sent.items() if value is not None}
        if transport == "http":
            async with session.get(http_base(server) + PREFIX + "/stats", headers=headers) as r:
                ok = r.status == 200
                assert ok or (r.status, (await r.json())["error"]["code"]) == (
                    401,
                    "unauthenticated",
                )
        else:
            try:
                await stub.Stats(pb.StatsRequest(), metadata=tuple(headers.items()))
                ok = True
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                ok = False
        assert ok == accepted, (x_api_key, authorization)


@pytest.mark.parametrize(
    "header", [b"X-API-Key: \xff\xfe", b"Authorization: Bearer \xc3\x28", b"X-API-Key: s3\xe9"]
)
async def test_key_header_that_is_not_utf8_is_401(make_server, header) -> None:
    server = await make_server(api_key=KEY)
    head = b"GET " + PREFIX.encode() + b"/stats HTTP/1.1\r\nHost: im\r\n" + header + b"\r\n\r\n"
    status, reply = await raw_request(server, head)
    assert (status, reply["error"]["code"]) == (401, "unauthenticated")


# --- logs ----------------------------------------------------------------------------


async def test_malformed_requests_log_a_few_lines_without_traceback(server, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    caplog.set_level(logging.INFO)
    # The first request of a connection is parsed by the front protocol; the second,
    # malformed one reaches aiohttp's parser.
    request = b"GET /ping HTTP/1.1\r\nHost: im\r\n\r\nGET /ping HTTP/1.1\r\nBad header\r\n\r\n"

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port(server))
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 5)  # until aiohttp closes
        writer.close()
        return answer

    answers = await asyncio.gather(*(one() for _ in range(200)))
    assert all(b" 400 " in answer for answer in answers)
    logged = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert 1 <= len(logged) <= 5, [r.getMessage() for r in logged]
    assert all(r.levelno < logging.WARNING for r in logged)
    assert not any(r.exc_info or r.exc_text for r in caplog.records)
