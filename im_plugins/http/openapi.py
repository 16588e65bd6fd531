"""The OpenAPI 3 document of the HTTP API, served at ``/api/v1/openapi.json``.

Built from the route table (``api.ROUTES``) and the per-method descriptions below,
so a route without a description fails loudly (and a test checks the document
lists every route).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

S = dict[str, Any]


def _obj(props: S, required: Sequence[str] = ()) -> S:
    schema: S = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


STR = {"type": "string"}
STRS = {"type": "array", "items": STR}
INT = {"type": "integer", "format": "int64"}
BOOL = {"type": "boolean"}
NUM = {"type": "number"}
ACK = {"type": "boolean", "description": "ask for an ack receipt; the reply carries the sid"}
MATCH = {"type": "string", "enum": ["any", "all"], "default": "any"}
PAYLOAD = {
    "data_b64": {"type": "string", "format": "byte", "description": "payload, base64"},
    "text": {"type": "string", "description": "payload as UTF-8 text (instead of data_b64)"},
}

SCHEMAS: dict[str, S] = {
    "Error": _obj(
        {"error": _obj({"code": STR, "message": STR, "queue_length": INT}, ["code", "message"])},
        ["error"],
    ),
    "Payload": _obj(PAYLOAD),
    "PushUserRequest": _obj({"user": STR, **PAYLOAD, "ack": ACK}, ["user"]),
    "PushUsersRequest": _obj({"users": STRS, **PAYLOAD, "ack": ACK}, ["users"]),
    "PushTagsRequest": _obj({"tags": STRS, "match": MATCH, **PAYLOAD, "ack": ACK}, ["tags"]),
    "PushByTagRequest": _obj(
        {"contents": {"type": "object", "additionalProperties": _ref("Payload")}}, ["contents"]
    ),
    "BroadcastRequest": _obj({**PAYLOAD, "ack": ACK}),
    "StreamPush": _obj(
        {"users": STRS, "tags": STRS, "all": BOOL, "match": MATCH, **PAYLOAD, "ack": ACK}
    ),
    "KickRequest": _obj({"user": STR, "reason": STR}, ["user"]),
    "RetagRequest": _obj({"user": STR, "add": STRS, "remove": STRS}, ["user"]),
    "PingReply": _obj({"node_id": INT}),
    "PushReply": _obj({"sid": INT, "missing": STRS}),
    "QueuedReply": _obj({"sid": INT, "queue_length": INT}),
    "StreamResult": _obj(
        {"seq": INT, "sid": INT, "missing": STRS, "error": _ref("Error")}, ["seq"]
    ),
    "PushStreamReply": _obj(
        {
            "results": {"type": "array", "items": _ref("StreamResult")},
            "processed": INT,
            "error": _ref("Error"),  # only when a limit stopped the stream (docs/api.md)
        }
    ),
    "Empty": _obj({}),
    "PresenceReply": _obj(
        {"online": BOOL, "node_id": INT, "conn_id": STR, "tags": STRS, "connected_at": NUM}
    ),
    "TagStat": _obj({"tag": STR, "number": INT, "created": NUM}),
    "DistributionReply": _obj({"tags": {"type": "array", "items": _ref("TagStat")}}),
    "StatsReply": _obj(
        {
            "node_id": INT,
            "online": INT,
            "connections": INT,
            "queue_length": INT,
            "queue_capacity": INT,
            "unacked": INT,
            "tag_groups": INT,
        }
    ),
    "AckEvent": _obj(
        {
            "outcome": {"type": "string", "enum": ["acked", "expired"]},
            "user": STR,
            "sid": INT,
            "tries": INT,
            "reason": STR,
            "data_b64": {"type": "string", "format": "byte"},
        }
    ),
}

# im.v1.Im method -> (summary, request schema or None, reply schema, error statuses).
OPERATIONS: dict[str, tuple[str, str | None, str, tuple[int, ...]]] = {
    "Ping": ("Liveness; this node's id.", None, "PingReply", ()),
    "PushUser": (
        "Push to one user (404 when not online).",
        "PushUserRequest",
        "PushReply",
        (400, 404, 408, 413, 503),
    ),
    "PushUsers": (
        "Push the same bytes to several users; `missing` lists those not reached.",
        "PushUsersRequest",
        "PushReply",
        (400, 408, 413, 503),
    ),
    "PushTags": (
        "Push to users with any (or all) of the tags, through the broadcast queue.",
        "PushTagsRequest",
        "QueuedReply",
        (400, 408, 413, 429),
    ),
    "PushByTag": (
        "Each tag gets its own payload (the original's WTIBroadcast).",
        "PushByTagRequest",
        "QueuedReply",
        (400, 408, 413, 429),
    ),
    "Broadcast": (
        "Push to every connected user, through the broadcast queue.",
        "BroadcastRequest",
        "QueuedReply",
        (400, 408, 413, 429),
    ),
    "PushStream": (
        "Many pushes in one request: an NDJSON body, one StreamPush per line. Results "
        "are listed only for lines with news (a sid, unreached users or an error), "
        "written while the body is read.",
        "StreamPush",
        "PushStreamReply",
        (400, 408, 413),
    ),
    "Kick": (
        "Close a user's connection (close code 4502).",
        "KickRequest",
        "Empty",
        (400, 404, 408, 413, 503),
    ),
    "Presence": ("Is the user online, and where.", None, "PresenceReply", (400, 503)),
    "Retag": (
        "Add and remove tags of a connected user.",
        "RetagRequest",
        "Empty",
        (400, 404, 408, 413, 503),
    ),
    "Distribution": ("Per-tag online numbers.", None, "DistributionReply", (503,)),
    "Stats": ("Online count and this node's numbers.", None, "StatsReply", (503,)),
    "AckEvents": (
        "Server-sent events (text/event-stream) of the ack outcomes of pushes made "
        "through this node, wherever the user was connected: "
        "`event: acked|expired`, `data:` an AckEvent. A `: subscribed` comment comes "
        "first; an `event: error` ends a subscriber that fell behind.",
        None,
        "AckEvent",
        (),
    ),
}

_ERROR_TEXT = {
    400: "malformed JSON or a missing/invalid field (named in the message)",
    401: "missing or wrong API key",
    404: "user not online",
    408: "the body did not arrive within body_timeout",
    413: "payload over max_message_size, or the body over its limit",
    429: "broadcast queue over its high-water mark (`queue_length` in the error)",
    503: "the broker is unavailable",
}


def _operation(method: str) -> S:
    summary, request, response, errors = OPERATIONS[method]
    media = "text/event-stream" if method == "AckEvents" else "application/json"
    op: S = {
        "operationId": method,
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {media: {"schema": _ref(response)}}}},
    }
    if request is not None:
        kind = "application/x-ndjson" if method == "PushStream" else "application/json"
        op["requestBody"] = {"required": True, "content": {kind: {"schema": _ref(request)}}}
    if method == "Presence":
        op["parameters"] = [{"name": "user", "in": "query", "required": True, "schema": STR}]
    for status in (*errors, 401):
        op["responses"][str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    return op


@functools.cache
def document(routes: tuple[tuple[str, str, Any, str], ...], prefix: str) -> S:
    paths: S = {}
    for http_method, path, _, method in routes:
        if not method:  # the document itself
            paths[prefix + path] = {
                "get": {
                    "operationId": "OpenAPI",
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": {"description": "OK"}},
                }
            }
            continue
        paths[prefix + path] = {http_method.lower(): _operation(method)}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "im push API",
            "version": "1",
            "description": "Mirrors the gRPC service im.v1.Im (proto/im_v1.proto) one to "
            'one. Errors are {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
