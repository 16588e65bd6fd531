"""What makes an im.v1 request valid, read from the proto: a field marked
``[(required) = true]`` must be non-empty (a string, bytes, list or map; each value
of a required map too). The HTTP API applies the same marks to JSON bodies, and its
OpenAPI document states them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from im_core.errors import InvalidArgument
from im_plugins.pb import im_v1_pb2 as pb

if TYPE_CHECKING:
    from google.protobuf.descriptor_pb2 import FieldOptions
    from google.protobuf.internal.extension_dict import _ExtensionFieldDescriptor

#: im.v1 Match values -> the core's ``match`` argument.
MATCH: dict[int, str] = {pb.MATCH_ANY: "any", pb.MATCH_ALL: "all"}

# The generated stub types the extension as a plain FieldDescriptor; indexing
# ``Extensions`` wants the handle typed with its target (FieldOptions) and value (bool).
_REQUIRED = cast("_ExtensionFieldDescriptor[FieldOptions, bool]", pb.required)

_required: dict[str, tuple[FieldDescriptor, ...]] = {}


def descriptor_of(message: Message | type[Message]) -> Descriptor:
    """``message.DESCRIPTOR``, typed as the descriptor module's class. The stubs keep
    the upb (C) descriptor apart from it, but at runtime it is an instance of it."""
    return cast(Descriptor, message.DESCRIPTOR)


def message_type(field: FieldDescriptor) -> Descriptor:
    """The message type of a message (or map) field."""
    if field.message_type is None:
        raise TypeError(f"{field.full_name}: not a message field")
    return field.message_type


def enum_type(field: FieldDescriptor) -> EnumDescriptor:
    """The enum type of an enum field."""
    if field.enum_type is None:
        raise TypeError(f"{field.full_name}: not an enum field")
    return field.enum_type


def is_required(field: FieldDescriptor) -> bool:
    return bool(field.GetOptions().Extensions[_REQUIRED])


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def required_fields(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    found = _required.get(descriptor.full_name)
    if found is None:
        found = _required[descriptor.full_name] = tuple(
            f for f in descriptor.fields if is_required(f)
        )
    return found


def _what(field: FieldDescriptor) -> str:
    if is_map(field):
        return "at least one entry"
    if field.is_repeated:
        return "at least one"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return "non-empty bytes"
    return "non-empty string"


def check(message: Message) -> None:
    """Raise ``InvalidArgument`` naming the first required field that is empty."""
    for field in required_fields(descriptor_of(message)):
        value = getattr(message, field.name)
        if not value:
            raise InvalidArgument(f"{field.name}: required ({_what(field)})")
        if is_map(field):
            for key, item in value.items():
                if not item:
                    raise InvalidArgument(f"{field.name}.{key}: required (non-empty)")


def match(value: int) -> str:
    try:
        return MATCH[value]
    except KeyError:
        raise InvalidArgument(f"match: unknown value {value}") from None
