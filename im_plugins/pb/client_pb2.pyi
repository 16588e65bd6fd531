from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ClientFrame(_message.Message):
    __slots__ = ("ack", "data")
    ACK_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ack: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, ack: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...
