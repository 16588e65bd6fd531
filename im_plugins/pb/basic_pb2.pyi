from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OnlinesReply(_message.Message):
    __slots__ = ("number",)
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    number: int
    def __init__(self, number: _Optional[int] = ...) -> None: ...

class SendMessageReq(_message.Message):
    __slots__ = ("token", "data")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    token: str
    data: bytes
    def __init__(self, token: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class SendMessageToMultipleReq(_message.Message):
    __slots__ = ("token", "data")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    token: _containers.RepeatedScalarFieldContainer[str]
    data: bytes
    def __init__(self, token: _Optional[_Iterable[str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SendMessageReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BroadcastReq(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class BroadcastReply(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class BroadcastByWTIReq(_message.Message):
    __slots__ = ("data",)
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: _containers.ScalarMap[str, bytes]
    def __init__(self, data: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class WTIDistribute(_message.Message):
    __slots__ = ("tag", "number", "createTime")
    TAG_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    CREATETIME_FIELD_NUMBER: _ClassVar[int]
    tag: str
    number: int
    createTime: int
    def __init__(self, tag: _Optional[str] = ..., number: _Optional[int] = ..., createTime: _Optional[int] = ...) -> None: ...

class WTIDistributeReply(_message.Message):
    __slots__ = ("data",)
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: WTIDistribute
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[WTIDistribute, _Mapping]] = ...) -> None: ...
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: _containers.MessageMap[str, WTIDistribute]
    def __init__(self, data: _Optional[_Mapping[str, WTIDistribute]] = ...) -> None: ...

class PushToClient(_message.Message):
    __slots__ = ("sid", "msg")
    SID_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    sid: int
    msg: bytes
    def __init__(self, sid: _Optional[int] = ..., msg: _Optional[bytes] = ...) -> None: ...
