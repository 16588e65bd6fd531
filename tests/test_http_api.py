"""What only the HTTP API has: JSON parsing errors, text payloads, the OpenAPI
document, JSON errors for unknown routes."""

from __future__ import annotations

import pytest

from im_plugins.http.api import PREFIX, ROUTES

from .api_clients import http_base
from .test_api import nothing, online


async def post(session, server, path: str, **kw):
    async with session.post(http_base(server) + PREFIX + path, **kw) as r:
        return r.status, await r.json()


async def test_text_payload_arrives_as_utf8(server, session, connect) -> None:
    alice = await connect(server, "alice")
    await online(server, alice)
    status, _ = await post(session, server, "/push_user", json={"user": "alice", "text": "héllo"})
    assert status == 200
    assert (await alice.receive()).data == "héllo".encode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body: malformed JSON"),
        (b"[1, 2]", "body: must be a JSON object"),
        (b'{"user": "alice"}', "data_b64 or text: exactly one is required"),
        (b'{"user": "alice", "text": "a", "data_b64": "YQ=="}', "data_b64 or text"),
        (b'{"user": "alice", "data_b64": "not base64!"}', "data_b64: not valid base64"),
        (b'{"user": 7, "text": "a"}', "user: required"),
        (b'{"user": "alice", "text": "a", "ack": "yes"}', "ack: must be true or false"),
    ],
)
async def test_malformed_body_is_400_naming_the_field(
    server, session, connect, body, field
) -> None:
    alice = await connect(server, "alice")
    await online(server, alice)
    status, reply = await post(session, server, "/push_user", data=body)
    assert status == 400
    assert reply["error"]["code"] == "invalid_argument"
    assert field in reply["error"]["message"]
    assert await nothing(alice)


async def test_bad_field_types_name_the_field(server, session) -> None:
    cases = [
        ("/push_users", {"users": "alice", "text": "a"}, "users: must be a list of strings"),
        ("/push_tags", {"tags": ["t"], "match": "some", "text": "a"}, "match: must be"),
        ("/push_by_tag", {"contents": {"v1": {}}}, "contents.v1.data_b64 or contents.v1.text"),
        ("/push_by_tag", {"contents": []}, "contents: required"),
        ("/retag", {"user": "a", "add": [1]}, "add: must be a list of strings"),
    ]
    for path, body, message in cases:
        status, reply = await post(session, server, path, json=body)
        assert (status, reply["error"]["code"]) == (400, "invalid_argument"), path
        assert message in reply["error"]["message"]


async def test_body_over_the_request_limit_is_413(make_server, session) -> None:
    server = await make_server(max_message_size=1024)
    status, reply = await post(session, server, "/broadcast", data=b"x" * (5 << 20))
    assert status == 413 and reply["error"]["code"] == "payload_too_large"


async def test_unknown_route_and_wrong_method_are_json_errors(server, session) -> None:
    async with session.get(http_base(server) + PREFIX + "/nope") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    async with session.get(http_base(server) + PREFIX + "/push_user") as r:
        assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"


async def test_openapi_documents_every_route(server, session) -> None:
    async with session.get(http_base(server) + PREFIX + "/openapi.json") as r:
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    served = {
        (route.method.lower(), route.resource.canonical)
        for app in (_http(server).app, *_subapps(server))
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith(PREFIX)
        and route.method != "HEAD"
    }
    documented = {(m, path) for path, ops in doc["paths"].items() for m in ops}
    assert served == documented
    assert len(served) == len(ROUTES)
    schemas = doc["components"]["schemas"]
    for ops in doc["paths"].values():
        for op in ops.values():
            for response in op["responses"].values():
                for media in response.get("content", {}).values():
                    assert media["schema"]["$ref"].rsplit("/", 1)[1] in schemas


def _http(server):
    return next(t for t in server.transports if t.name == "http")


def _subapps(server):
    for resource in _http(server).app.router.resources():
        sub = getattr(resource, "_app", None)
        if sub is not None:
            yield sub


async def test_legacy_error_fields_stay(server, session) -> None:
    status, reply = await post(session, server, "/push_user", json={"user": "x", "text": "a"})
    assert status == 404 and reply["status"] == 404 and reply["data"] == reply["error"]["message"]
