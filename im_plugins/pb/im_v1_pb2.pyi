from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Match(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MATCH_ANY: _ClassVar[Match]
    MATCH_ALL: _ClassVar[Match]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    ACKED: _ClassVar[Outcome]
    EXPIRED: _ClassVar[Outcome]
MATCH_ANY: Match
MATCH_ALL: Match
OUTCOME_UNSPECIFIED: Outcome
ACKED: Outcome
EXPIRED: Outcome
REQUIRED_FIELD_NUMBER: _ClassVar[int]
required: _descriptor.FieldDescriptor

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class PushUserRequest(_message.Message):
    __slots__ = ("user", "data", "ack", "store")
    USER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    user: str
    data: bytes
    ack: bool
    store: bool
    def __init__(self, user: _Optional[str] = ..., data: _Optional[bytes] = ..., ack: _Optional[bool] = ..., store: _Optional[bool] = ...) -> None: ...

class PushUsersRequest(_message.Message):
    __slots__ = ("users", "data", "ack", "store")
    USERS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedScalarFieldContainer[str]
    data: bytes
    ack: bool
    store: bool
    def __init__(self, users: _Optional[_Iterable[str]] = ..., data: _Optional[bytes] = ..., ack: _Optional[bool] = ..., store: _Optional[bool] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("sid", "missing", "stored")
    SID_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    sid: int
    missing: _containers.RepeatedScalarFieldContainer[str]
    stored: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sid: _Optional[int] = ..., missing: _Optional[_Iterable[str]] = ..., stored: _Optional[_Iterable[str]] = ...) -> None: ...

class PushTagsRequest(_message.Message):
    __slots__ = ("tags", "match", "data", "ack", "store")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedScalarFieldContainer[str]
    match: Match
    data: bytes
    ack: bool
    store: bool
    def __init__(self, tags: _Optional[_Iterable[str]] = ..., match: _Optional[_Union[Match, str]] = ..., data: _Optional[bytes] = ..., ack: _Optional[bool] = ..., store: _Optional[bool] = ...) -> None: ...

class PushByTagRequest(_message.Message):
    __slots__ = ("contents",)
    class ContentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    CONTENTS_FIELD_NUMBER: _ClassVar[int]
    contents: _containers.ScalarMap[str, bytes]
    def __init__(self, contents: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class BroadcastRequest(_message.Message):
    __slots__ = ("data", "ack")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    ack: bool
    def __init__(self, data: _Optional[bytes] = ..., ack: _Optional[bool] = ...) -> None: ...

class QueuedReply(_message.Message):
    __slots__ = ("sid", "queue_length")
    SID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    sid: int
    queue_length: int
    def __init__(self, sid: _Optional[int] = ..., queue_length: _Optional[int] = ...) -> None: ...

class PushBatch(_message.Message):
    __slots__ = ("pushes",)
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    pushes: _containers.RepeatedCompositeFieldContainer[StreamPush]
    def __init__(self, pushes: _Optional[_Iterable[_Union[StreamPush, _Mapping]]] = ...) -> None: ...

class StreamPush(_message.Message):
    __slots__ = ("users", "tags", "all", "match", "data", "ack", "store")
    USERS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    match: Match
    data: bytes
    ack: bool
    store: bool
    def __init__(self, users: _Optional[_Iterable[str]] = ..., tags: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., match: _Optional[_Union[Match, str]] = ..., data: _Optional[bytes] = ..., ack: _Optional[bool] = ..., store: _Optional[bool] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StreamResult(_message.Message):
    __slots__ = ("seq", "sid", "missing", "error", "stored")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sid: int
    missing: _containers.RepeatedScalarFieldContainer[str]
    error: Error
    stored: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., sid: _Optional[int] = ..., missing: _Optional[_Iterable[str]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., stored: _Optional[_Iterable[str]] = ...) -> None: ...

class KickRequest(_message.Message):
    __slots__ = ("user", "reason")
    USER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user: str
    reason: str
    def __init__(self, user: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class KickReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PresenceRequest(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: str
    def __init__(self, user: _Optional[str] = ...) -> None: ...

class PresenceReply(_message.Message):
    __slots__ = ("online", "node_id", "conn_id", "tags", "connected_at", "devices")
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    online: bool
    node_id: int
    conn_id: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    connected_at: float
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, online: _Optional[bool] = ..., node_id: _Optional[int] = ..., conn_id: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., connected_at: _Optional[float] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("device", "node_id", "conn_id", "tags", "connected_at")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    device: str
    node_id: int
    conn_id: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    connected_at: float
    def __init__(self, device: _Optional[str] = ..., node_id: _Optional[int] = ..., conn_id: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., connected_at: _Optional[float] = ...) -> None: ...

class RetagRequest(_message.Message):
    __slots__ = ("user", "add", "remove")
    USER_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    user: str
    add: _containers.RepeatedScalarFieldContainer[str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user: _Optional[str] = ..., add: _Optional[_Iterable[str]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class RetagReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DistributionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TagStat(_message.Message):
    __slots__ = ("tag", "number", "created")
    TAG_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    tag: str
    number: int
    created: float
    def __init__(self, tag: _Optional[str] = ..., number: _Optional[int] = ..., created: _Optional[float] = ...) -> None: ...

class DistributionReply(_message.Message):
    __slots__ = ("tags",)
    TAGS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[TagStat]
    def __init__(self, tags: _Optional[_Iterable[_Union[TagStat, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("node_id", "online", "connections", "queue_length", "queue_capacity", "unacked", "tag_groups", "online_connections")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    UNACKED_FIELD_NUMBER: _ClassVar[int]
    TAG_GROUPS_FIELD_NUMBER: _ClassVar[int]
    ONLINE_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    online: int
    connections: int
    queue_length: int
    queue_capacity: int
    unacked: int
    tag_groups: int
    online_connections: int
    def __init__(self, node_id: _Optional[int] = ..., online: _Optional[int] = ..., connections: _Optional[int] = ..., queue_length: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., unacked: _Optional[int] = ..., tag_groups: _Optional[int] = ..., online_connections: _Optional[int] = ...) -> None: ...

class NodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "users", "connections")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    users: int
    connections: int
    def __init__(self, node_id: _Optional[int] = ..., users: _Optional[int] = ..., connections: _Optional[int] = ...) -> None: ...

class NodesReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class AckEventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AckEvent(_message.Message):
    __slots__ = ("outcome", "user", "sid", "tries", "reason", "data", "device")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    TRIES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    outcome: Outcome
    user: str
    sid: int
    tries: int
    reason: str
    data: bytes
    device: str
    def __init__(self, outcome: _Optional[_Union[Outcome, str]] = ..., user: _Optional[str] = ..., sid: _Optional[int] = ..., tries: _Optional[int] = ..., reason: _Optional[str] = ..., data: _Optional[bytes] = ..., device: _Optional[str] = ...) -> None: ...
