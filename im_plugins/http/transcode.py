"""JSON <-> im.v1 messages, driven by their descriptors (``proto/im_v1.proto``).

The JSON form: an object with the proto field names; a bytes field ``data`` is
``data_b64`` (base64) or ``text`` (UTF-8), exactly one (another bytes field ``x``
would be ``x_b64``); a ``map<string, bytes>`` holds such ``{data_b64 | text}``
objects; an enum is its value name without the enum's prefix, lowercased
(``MATCH_ALL`` -> ``"all"``). ``decode`` refuses unknown fields, wrong types and
empty required fields (``[(required) = true]``) with an ``InvalidArgument`` whose
message starts with the field's JSON name; ``openapi.py`` states the same rules.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from im_core.errors import InvalidArgument
from im_plugins.push_api.rules import (
    descriptor_of,
    enum_type,
    is_map,
    is_required,
    message_type,
)

F = FieldDescriptor
#: A field's reader: (JSON object, name prefix) -> its value, or _ABSENT.
Reader = Callable[[dict[str, Any], str], Any]
_ABSENT = object()

STRING_TYPES = (F.TYPE_STRING,)
INT_TYPES = (F.TYPE_INT64, F.TYPE_INT32, F.TYPE_UINT64, F.TYPE_UINT32, F.TYPE_SINT64)
FLOAT_TYPES = (F.TYPE_DOUBLE, F.TYPE_FLOAT)


def _name(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


#: The JSON names of a payload: a field ``data``, or a value of a map<string, bytes>.
PAYLOAD_KEYS = ("data_b64", "text")


def bytes_keys(field: FieldDescriptor) -> tuple[str, ...]:
    """The JSON names of a bytes field: ``data`` -> ``data_b64``, ``text``."""
    return PAYLOAD_KEYS if field.name in ("data", "value") else (f"{field.name}_b64",)


def enum_names(enum: EnumDescriptor) -> dict[str, int]:
    """JSON name -> number: ``Match.MATCH_ANY`` -> ``"any"``."""
    prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum.name)[1:] + "_"
    return {
        (v.name[len(prefix) :] if v.name.startswith(prefix) else v.name).lower(): v.number
        for v in enum.values
    }


def json_keys(field: FieldDescriptor) -> tuple[str, ...]:
    if field.type == F.TYPE_BYTES and not field.is_repeated:
        return bytes_keys(field)
    return (field.name,)


# --- decode ------------------------------------------------------------------------


def payload(data: dict[str, Any], where: str, keys: tuple[str, ...], required: bool) -> Any:
    """The bytes of ``data_b64`` or ``text`` (exactly one of them when required)."""
    present = [k for k in keys if data.get(k) is not None]
    if len(present) != 1:
        if not present and not required:
            return _ABSENT
        names = " or ".join(_name(where, k) for k in keys)
        raise InvalidArgument(f"{names}: exactly one is required")
    key = present[0]
    value = data[key]
    if key == "text":
        if not isinstance(value, str) or (required and not value):
            raise InvalidArgument(f"{_name(where, key)}: must be a non-empty string")
        return value.encode()
    if not isinstance(value, str) or (required and not value):
        raise InvalidArgument(f"{_name(where, key)}: must be a non-empty base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{_name(where, key)}: not valid base64") from None


def _scalar(field: FieldDescriptor) -> tuple[Callable[[Any], bool], str, Callable[[Any], Any]]:
    """(is this JSON value of the field's type, what it must be, JSON -> Python)."""
    t = field.type
    if t in STRING_TYPES:
        return (lambda v: isinstance(v, str)), "a string", str
    if t == F.TYPE_BOOL:
        return (lambda v: isinstance(v, bool)), "true or false", bool
    if t in INT_TYPES:
        return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "an integer", int
    if t in FLOAT_TYPES:
        return (lambda v: isinstance(v, int | float) and not isinstance(v, bool)), "a number", float
    if t == F.TYPE_ENUM:
        names = enum_names(enum_type(field))
        quoted = [repr(n) for n in names]
        what = " or ".join([", ".join(quoted[:-1]), quoted[-1]]) if len(quoted) > 1 else quoted[0]
        return (lambda v: isinstance(v, str) and v in names), what, names.__getitem__
    raise TypeError(f"{field.full_name}: no JSON form for this field type")


def _reader(field: FieldDescriptor) -> Reader:
    name, required = field.name, is_required(field)
    if is_map(field):
        value_field = message_type(field).fields_by_name["value"]
        if value_field.type != F.TYPE_BYTES:
            raise TypeError(f"{field.full_name}: only map<string, bytes> has a JSON form")
        keys = bytes_keys(value_field)

        def read_map(data: dict[str, Any], where: str) -> Any:
            value = data.get(name)
            if value is None and not required:
                return _ABSENT
            if not isinstance(value, dict) or (required and not value):
                what = "required" if required else "must be"
                shape = "{" + " | ".join(keys) + "}"
                raise InvalidArgument(f"{_name(where, name)}: {what} (an object key -> {shape})")
            out = {}
            for key, item in value.items():
                at = _name(_name(where, name), key)
                _only(item, at, keys, at)
                out[key] = payload(item, at, keys, required)
            return out

        return read_map
    if field.type == F.TYPE_BYTES and not field.is_repeated:
        keys = bytes_keys(field)
        return lambda data, where: payload(data, where, keys, required)
    if field.type == F.TYPE_MESSAGE:
        cls = GetMessageClass(message_type(field))

        def read_message(data: dict[str, Any], where: str) -> Any:
            value = data.get(name)
            if value is None:
                return _ABSENT
            at = _name(where, name)
            if field.is_repeated:
                if not isinstance(value, list):
                    raise InvalidArgument(f"{at}: must be a list of objects")
                return [decode(v, cls, f"{at}[{i}]") for i, v in enumerate(value)]
            return decode(value, cls, at)

        return read_message
    ok, what, convert = _scalar(field)
    if field.is_repeated:
        plural = f"a list of {'strings' if what == 'a string' else 'values, each ' + what}"

        def read_list(data: dict[str, Any], where: str) -> Any:
            value = data.get(name)
            if value is None:
                value = []
            if not isinstance(value, list) or not all(ok(v) for v in value):
                raise InvalidArgument(f"{_name(where, name)}: must be {plural}")
            if not value:
                if required:
                    raise InvalidArgument(f"{_name(where, name)}: required (at least one)")
                return _ABSENT
            return [convert(v) for v in value]

        return read_list

    def read_scalar(data: dict[str, Any], where: str) -> Any:
        value = data.get(name)
        if required and not (ok(value) and value):  # a wrong type reads as missing
            raise InvalidArgument(f"{_name(where, name)}: required (non-empty {what[2:]})")
        if value is None:
            return _ABSENT
        if not ok(value):
            raise InvalidArgument(f"{_name(where, name)}: must be {what}")
        return convert(value)

    return read_scalar


class _Plan:
    """How to decode one message type, worked out once."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.cls = GetMessageClass(descriptor)
        self.readers = tuple((f.name, _reader(f)) for f in descriptor.fields)
        self.keys = tuple(k for f in descriptor.fields for k in json_keys(f))
        self.known = frozenset(self.keys)


_plans: dict[str, _Plan] = {}


def _plan(descriptor: Descriptor) -> _Plan:
    plan = _plans.get(descriptor.full_name)
    if plan is None:
        plan = _plans[descriptor.full_name] = _Plan(descriptor)
    return plan


def _only(data: Any, what: str, keys: tuple[str, ...] | frozenset[str], where: str) -> None:
    """``data`` is an object with no key beyond ``keys``."""
    if not isinstance(data, dict):
        raise InvalidArgument(f"{what}: must be a JSON object")
    for key in data:
        if key not in keys:
            expected = ", ".join(sorted(keys)) or "none"
            raise InvalidArgument(f"{_name(where, key)}: unknown field (expected {expected})")


def decode(data: Any, cls: type[Message], where: str = "", what: str = "") -> Any:
    """The message ``cls`` from a parsed JSON value; ``where`` prefixes field names
    in errors (``contents.v1``), ``what`` names the object itself (the body, a line)."""
    plan = _plan(descriptor_of(cls))
    _only(data, what or where or "body", plan.known, where)
    fields = {}
    for name, read in plan.readers:
        value = read(data, where)
        if value is not _ABSENT:
            fields[name] = value
    return plan.cls(**fields)


# --- encode ------------------------------------------------------------------------


def _writer(field: FieldDescriptor) -> Callable[[Any], Any]:
    if is_map(field):
        inner = _writer(message_type(field).fields_by_name["value"])
        return lambda value: {k: inner(v) for k, v in value.items()}
    if field.type == F.TYPE_MESSAGE:
        one: Callable[[Any], Any] = encode
    elif field.type == F.TYPE_BYTES:

        def one(v: Any) -> Any:
            return base64.b64encode(v).decode()
    elif field.type == F.TYPE_ENUM:
        names = {n: s for s, n in enum_names(enum_type(field)).items()}
        one = names.__getitem__
    else:
        return list if field.is_repeated else (lambda v: v)
    if field.is_repeated:
        return lambda value: [one(v) for v in value]
    return one


_writers: dict[str, tuple[tuple[str, str, Callable[[Any], Any], bool], ...]] = {}


def encode(message: Message) -> dict[str, Any]:
    """A reply as JSON: every field, zero values included (a message field only
    when set); bytes as ``<name>_b64``, enums by their JSON name."""
    descriptor = descriptor_of(message)
    writers = _writers.get(descriptor.full_name)
    if writers is None:
        writers = _writers[descriptor.full_name] = tuple(
            (
                f.name,
                json_keys(f)[0],
                _writer(f),
                f.type == F.TYPE_MESSAGE and not f.is_repeated,
            )
            for f in descriptor.fields
        )
    out = {}
    for name, key, write, optional in writers:
        if optional and not message.HasField(name):
            continue
        out[key] = write(getattr(message, name))
    return out
