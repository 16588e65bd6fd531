"""The OpenAPI document and the handlers agree: bodies built from each route's
request schema are refused by the handler exactly when the schema refuses them
(400, a JSON error naming the field), for every route."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from im_plugins.http.api import PREFIX, ROUTES

from .api_clients import http_base

S = dict[str, Any]
JSON_BODY = [(verb, path) for verb, path, _, method in ROUTES if method and verb == "POST"]
QUERY = [(verb, path) for verb, path, _, method in ROUTES if method and verb == "GET"]


def resolve(schema: S, schemas: S) -> S:
    while "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def example(schema: S, schemas: S) -> Any:
    """A value the schema accepts: every property filled, the first oneOf branch."""
    schema = resolve(schema, schemas)
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        skip = {k for branch in schema.get("oneOf", [])[1:] for k in branch["required"]}
        return {
            name: example(prop, schemas)
            for name, prop in schema["properties"].items()
            if name not in skip
        }
    if kind == "object":
        return {"t": example(schema["additionalProperties"], schemas)}
    if kind == "array":
        return [example(schema["items"], schemas)]
    if kind == "boolean":
        return False
    if kind == "integer":
        return 1
    if "enum" in schema:
        return schema["enum"][0]
    return "aGk=" if schema.get("format") == "byte" else "alice"


WRONG: dict[str, list[Any]] = {
    "string": [7, True, ["a"]],
    "boolean": ["yes", 1],
    "integer": ["1", 1.5],
    "array": ["alice", [1], {}],
    "object": [[], "x"],
}


def wrong_values(schema: S, schemas: S) -> list[Any]:
    """Values of the wrong type, or outside the schema's bounds."""
    schema = resolve(schema, schemas)
    values = list(WRONG[schema["type"]])
    if "enum" in schema:
        values.append("no-such-value")
    if schema.get("format") == "byte":
        values.append("not base64!")
    if schema.get("minLength"):
        values.append("")
    if schema.get("minItems"):
        values.append([])
    if schema.get("minProperties"):
        values.append({})
    return values


def bad_bodies(schema: S, schemas: S) -> list[tuple[str, S]]:
    """(field the error must name, body) for each way to break the schema."""
    good = example(schema, schemas)
    bad: list[tuple[str, S]] = [("bogus", {**good, "bogus": 1})]  # additionalProperties
    for name, prop in schema["properties"].items():
        if name in good:
            bad += [(name, {**good, name: value}) for value in wrong_values(prop, schemas)]
        inner = resolve(prop, schemas).get("additionalProperties")
        if inner:  # a map of objects: break one value ("contents.t.data_b64")
            for field, value in bad_bodies(resolve(inner, schemas), schemas):
                bad.append((f"{name}.t.{field}", {**good, name: {"t": value}}))
    for name in schema.get("required", ()):
        bad.append((name, {k: v for k, v in good.items() if k != name}))
    branches = [b["required"][0] for b in schema.get("oneOf", ())]
    if branches:
        first = branches[0]
        bad.append((first, {k: v for k, v in good.items() if k not in branches}))
        bad.append(
            (first, {**good, **{k: example(schema["properties"][k], schemas) for k in branches}})
        )
    return bad


async def openapi(session, server) -> S:
    async with session.get(http_base(server) + PREFIX + "/openapi.json") as r:
        return await r.json()


@pytest.mark.parametrize(("verb", "path"), JSON_BODY, ids=[p for _, p in JSON_BODY])
async def test_a_body_the_schema_refuses_is_refused_naming_the_field(
    server, session, verb, path
) -> None:
    doc = await openapi(session, server)
    schemas = doc["components"]["schemas"]
    op = doc["paths"][PREFIX + path][verb.lower()]
    [(media, content)] = op["requestBody"]["content"].items()
    schema = resolve(content["schema"], schemas)
    url = http_base(server) + PREFIX + path

    async def send(body: S) -> tuple[int, S]:
        async with session.post(url, data=orjson.dumps(body)) as r:
            return r.status, await r.json()

    status, reply = await send(example(schema, schemas))  # the schema accepts it: so does im
    assert status in (200, 404), reply  # 404: nobody is online
    for field, body in bad_bodies(schema, schemas):
        status, reply = await send(body)
        if media == "application/x-ndjson":  # one line: its error is a result
            assert status == 200, (body, reply)
            [result] = reply["results"]
            error = result["error"]
        else:
            assert status == 400, (body, reply)
            error = reply["error"]
        assert error["code"] == "invalid_argument", (body, reply)
        assert error["message"].startswith(field) or f" {field}" in error["message"], (
            body,
            error,
        )


@pytest.mark.parametrize(("verb", "path"), QUERY, ids=[p for _, p in QUERY])
async def test_a_query_without_its_required_parameters_is_refused(
    server, session, verb, path
) -> None:
    doc = await openapi(session, server)
    op = doc["paths"][PREFIX + path]["get"]
    url = http_base(server) + PREFIX + path
    for param in op.get("parameters", ()):
        if param["required"]:
            async with session.get(url) as r:
                assert r.status == 400
                assert (await r.json())["error"]["message"].startswith(param["name"])
            async with session.get(url, params={param["name"]: "ghost", "bogus": "1"}) as r:
                assert r.status == 400
                assert (await r.json())["error"]["message"].startswith("bogus")
