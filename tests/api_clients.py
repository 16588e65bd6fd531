"""One calling convention for both push APIs, so a test body runs against gRPC
(``im.v1.Im``) and HTTP (``/api/v1``) alike: ``await api.call("PushUser",
user="alice", data=b"hi")`` returns the reply as a dict or raises ``ApiError``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import sys
from typing import Any

import aiohttp
import grpc
from google.protobuf.message import Message

from im_core import Server
from im_plugins.http.api import PREFIX, ROUTES
from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.pb import im_v1_pb2_grpc

# gRPC status -> the HTTP status the other API answers with.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
ORIGINAL = pathlib.Path(__file__).parent / "original"
HTTP_ROUTES = {method: (verb, PREFIX + path) for verb, path, _, method in ROUTES if method}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, extra: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status  # HTTP status (for gRPC: the mapped one, 413 reads as 400)
        self.code = code  # HTTP error code, or the gRPC status name lowercased
        self.message = message
        self.extra = extra  # HTTP error fields / gRPC trailing metadata


def grpc_target(server: Server) -> str:
    port = next(t.port for t in server.transports if t.name == "grpc")
    return f"127.0.0.1:{port}"


def http_base(server: Server) -> str:
    http = next(t for t in server.transports if t.name == "http")
    return f"{http.scheme}://127.0.0.1:{http.port}"


def to_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = dict(value)
        elif field.is_repeated:
            value = [to_dict(v) if isinstance(v, Message) else v for v in value]
        elif isinstance(value, Message):
            value = to_dict(value) if message.HasField(field.name) else None
        elif field.enum_type is not None:
            value = field.enum_type.values_by_number[value].name
        out[field.name] = value
    return out


class GrpcApi:
    name = "grpc"

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple = ()) -> None:
        self.stub = im_v1_pb2_grpc.ImStub(channel)
        self.metadata = metadata

    async def call(self, method: str, **fields: Any) -> dict[str, Any]:
        if "match" in fields:
            fields["match"] = {"any": pb.MATCH_ANY, "all": pb.MATCH_ALL}[fields["match"]]
        request_type = getattr(pb, f"{method}Request")
        try:
            reply = await getattr(self.stub, method)(request_type(**fields), metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            trailing = dict(exc.trailing_metadata() or ())
            raise ApiError(
                HTTP_STATUS.get(code, 500), code.name.lower(), exc.details() or "", trailing
            ) from None
        return to_dict(reply)


def _json_fields(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    if isinstance(out.get("data"), bytes):
        out["data_b64"] = base64.b64encode(out.pop("data")).decode()
    if "contents" in out:
        out["contents"] = {
            tag: {"data_b64": base64.b64encode(data).decode()}
            for tag, data in out["contents"].items()
        }
    return out


class HttpApi:
    name = "http"

    def __init__(self, session: aiohttp.ClientSession, base: str, headers: dict | None = None):
        self.session = session
        self.base = base
        self.headers = headers or {}

    async def call(self, method: str, **fields: Any) -> dict[str, Any]:
        verb, path = HTTP_ROUTES[method]
        url = self.base + path
        if verb == "GET":
            request = self.session.get(url, params=fields, headers=self.headers)
        else:
            request = self.session.post(url, json=_json_fields(fields), headers=self.headers)
        async with request as response:
            body = await response.json()
        if response.status != 200:
            error = body["error"]
            raise ApiError(response.status, error["code"], error["message"], error)
        return body


async def run_original_backend(stubs: pathlib.Path, target: str, key: str = "") -> dict:
    """Run tests/original/backend.py against ``target``; its results by call name
    (the second SendMessage, to an offline user, is ``SendMessage:offline``)."""
    env = {**os.environ, "PYTHONPATH": str(stubs)}
    args = [str(ORIGINAL / "backend.py"), target, *([key] if key else [])]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    results: dict = {}
    for line in out.decode().splitlines():
        result = json.loads(line)
        name = result["call"]
        results[f"{name}:offline" if name in results else name] = result
    return results
