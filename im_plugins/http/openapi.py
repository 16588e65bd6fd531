"""The OpenAPI 3 document of the HTTP API, served at ``/api/v1/openapi.json``.

Generated from the route table (``api.ROUTES``) and the im.v1 descriptors: each
request and reply schema is its proto message in the JSON form ``transcode.py``
reads and writes (unknown fields refused, ``[(required) = true]`` fields required,
``data`` as ``data_b64`` or ``text``). What the proto cannot say is kept below: a
one-line summary and the error statuses of each method, and the HTTP-only shapes
(the error body, the push_stream reply).
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from im_plugins.pb import im_v1_pb2 as pb
from im_plugins.push_api.rules import descriptor_of, enum_type, is_map, is_required, message_type

from .transcode import FLOAT_TYPES, INT_TYPES, PAYLOAD_KEYS, bytes_keys, enum_names

S = dict[str, Any]
F = FieldDescriptor
SERVICE = pb.DESCRIPTOR.services_by_name["Im"]


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


INT = {"type": "integer", "format": "int64"}
STR = {"type": "string"}

#: The HTTP-only shapes.
HTTP_SCHEMAS: dict[str, S] = {
    "ErrorBody": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": STR, "message": STR, "queue_length": INT},
                "required": ["code", "message"],
            },
            "status": {"type": "integer", "description": "the HTTP status (original's shape)"},
            "data": {"type": "string", "description": "the message (original's shape)"},
        },
        "required": ["error"],
    },
    "Payload": {
        "type": "object",
        "properties": {
            "data_b64": {"type": "string", "format": "byte", "description": "payload, base64"},
            "text": {"type": "string", "description": "payload as UTF-8 text"},
        },
        "additionalProperties": False,
        "oneOf": [{"required": ["data_b64"]}, {"required": ["text"]}],
    },
    "PushStreamReply": {
        "type": "object",
        "properties": {
            "results": {"type": "array", "items": _ref("StreamResult")},
            "processed": INT,
            "error": _ref("Error"),  # only when a limit stopped the stream (docs/api.md)
        },
    },
}

# im.v1.Im method -> (summary, error statuses). A method missing here fails loudly.
OPERATIONS: dict[str, tuple[str, tuple[int, ...]]] = {
    "Ping": ("Liveness; this node's id.", ()),
    "PushUser": ("Push to one user (404 when not online).", (400, 404, 408, 413, 503)),
    "PushUsers": (
        "Push the same bytes to several users; `missing` lists those not reached.",
        (400, 408, 413, 503),
    ),
    "PushTags": (
        "Push to users with any (or all) of the tags, through the broadcast queue.",
        (400, 408, 413, 429),
    ),
    "PushByTag": (
        "Each tag gets its own payload (the original's WTIBroadcast).",
        (400, 408, 413, 429),
    ),
    "Broadcast": (
        "Push to every connected user, through the broadcast queue.",
        (400, 408, 413, 429),
    ),
    "PushStream": (
        "Many pushes in one request: an NDJSON body, one StreamPush per line. Results "
        "are listed only for lines with news (a sid, unreached users or an error), "
        "written while the body is read.",
        (400, 408, 413),
    ),
    "Kick": ("Close a user's connection (close code 4502).", (400, 404, 408, 413, 503)),
    "Presence": ("Is the user online, and where.", (400, 503)),
    "Retag": ("Add and remove tags of a connected user.", (400, 404, 408, 413, 503)),
    "Distribution": ("Per-tag online numbers.", (503,)),
    "Stats": ("Online count and this node's numbers.", (503,)),
    "Nodes": ("The cluster's live nodes, each with its users and connections.", (503,)),
    "AckEvents": (
        "Server-sent events (text/event-stream) of the ack outcomes of pushes made "
        "through this node, wherever the user was connected: "
        "`event: acked|expired`, `data:` an AckEvent. A `: subscribed` comment comes "
        "first; an `event: error` ends a subscriber that fell behind.",
        (),
    ),
}

_ERROR_TEXT = {
    400: "malformed JSON, an unknown field, or a missing/invalid field (named in the message)",
    401: "missing or wrong API key",
    404: "user not online",
    408: "the body did not arrive within body_timeout",
    413: "payload over max_message_size, or the body over its limit",
    429: "broadcast queue over its high-water mark (`queue_length` in the error)",
    503: "the broker is unavailable",
}


# --- schemas from descriptors -----------------------------------------------------


def _scalar(field: FieldDescriptor) -> S:
    t = field.type
    if t == F.TYPE_BOOL:
        return {"type": "boolean"}
    if t in INT_TYPES:
        return {"type": "integer", "format": "int32" if t == F.TYPE_INT32 else "int64"}
    if t in FLOAT_TYPES:
        return {"type": "number", "format": "double"}
    if t == F.TYPE_ENUM:
        names = list(enum_names(enum_type(field)))
        return {"type": "string", "enum": names, "default": names[0]}
    if t == F.TYPE_MESSAGE:
        return _ref(message_type(field).name)
    return {"type": "string"}


def _properties(field: FieldDescriptor, request: bool) -> S:
    """The JSON properties of one field (two for a ``data`` payload)."""
    required = request and is_required(field)
    if is_map(field):  # map<string, bytes>: an object of payloads
        schema: S = {"type": "object", "additionalProperties": _ref("Payload")}
        if required:
            schema["minProperties"] = 1
        return {field.name: schema}
    if field.type == F.TYPE_BYTES and not field.is_repeated:
        keys = bytes_keys(field)
        props: S = {keys[0]: {"type": "string", "format": "byte"}}
        if request and keys == PAYLOAD_KEYS:
            props["text"] = {"type": "string", "description": "instead of data_b64: UTF-8 text"}
        if required:
            for prop in props.values():
                prop["minLength"] = 1
        return props
    schema = _scalar(field)
    if field.is_repeated:
        schema = {"type": "array", "items": schema}
        if required:
            schema["minItems"] = 1
    elif required and schema.get("type") == "string":
        schema = {**schema, "minLength": 1}
    return {field.name: schema}


def message_schema(descriptor: Descriptor, request: bool) -> S:
    """A message's JSON schema; a request's states what ``transcode.decode`` checks."""
    props: S = {}
    for field in descriptor.fields:
        props.update(_properties(field, request))
    schema: S = {"type": "object", "properties": props}
    if not request:
        return schema
    required = [f.name for f in descriptor.fields if is_required(f) and not bytes_or_map_payload(f)]
    if required:
        schema["required"] = required
    payloads = [f for f in descriptor.fields if is_required(f) and bytes_or_map_payload(f)]
    for field in payloads:
        if is_map(field):
            schema.setdefault("required", []).append(field.name)
        else:
            keys = bytes_keys(field)
            schema["oneOf"] = [{"required": [k]} for k in keys]
    schema["additionalProperties"] = False
    return schema


def bytes_or_map_payload(field: FieldDescriptor) -> bool:
    return is_map(field) or (field.type == F.TYPE_BYTES and not field.is_repeated)


def _collect(descriptor: Descriptor, request: bool, into: dict[str, S]) -> None:
    if descriptor.name in into:
        return
    into[descriptor.name] = message_schema(descriptor, request)
    for field in descriptor.fields:
        if field.type == F.TYPE_MESSAGE and not is_map(field):
            _collect(message_type(field), request, into)


# --- operations --------------------------------------------------------------------


def _operation(method: str, http_method: str, schemas: dict[str, S]) -> S:
    summary, errors = OPERATIONS[method]
    descriptor = SERVICE.methods_by_name[method]
    request = descriptor.input_type
    if method == "PushStream":
        request = descriptor_of(pb.StreamPush)  # the HTTP form: one per NDJSON line
    _collect(request, True, schemas)
    reply = "PushStreamReply" if method == "PushStream" else descriptor.output_type.name
    _collect(descriptor.output_type, False, schemas)
    media = "text/event-stream" if method == "AckEvents" else "application/json"
    op: S = {
        "operationId": method,
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {media: {"schema": _ref(reply)}}}},
    }
    if http_method == "GET":
        if request.fields:
            params = schemas[request.name]["properties"]
            needed = set(schemas[request.name].get("required", ()))
            op["parameters"] = [
                {"name": name, "in": "query", "required": name in needed, "schema": schema}
                for name, schema in params.items()
            ]
    else:
        kind = "application/x-ndjson" if method == "PushStream" else "application/json"
        op["requestBody"] = {
            "required": True,
            "content": {kind: {"schema": _ref(request.name)}},
        }
    for status in (*errors, 401):
        op["responses"][str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": _ref("ErrorBody")}},
        }
    return op


@functools.cache
def document(routes: tuple[tuple[str, str, Any, str], ...], prefix: str) -> S:
    schemas: dict[str, S] = dict(HTTP_SCHEMAS)
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
        paths[prefix + path] = {http_method.lower(): _operation(method, http_method, schemas)}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "im push API",
            "version": "1",
            "description": "Derived from the gRPC service im.v1.Im (proto/im_v1.proto): one "
            "route per method, request and reply schemas generated from its messages. "
            'Errors are {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
