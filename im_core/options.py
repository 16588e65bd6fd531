"""Server options: typed, validated, with the original service's defaults.

Every field is settable from the command line (``--http-port``), the environment
(``IM_HTTP_PORT``) and a TOML file (``http_port = 8080``); see ``im_core.cli``.
Plugins add their own options through the ``im_add_options`` hook; their values
live in ``Options.plugin``.
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

CODECS = ("json", "protobuf")
MESSAGE_TYPES = ("text", "binary")


def _positive(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _port(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be a port number 0-65535, got {value!r}")


@attrs.define(kw_only=True)
class Options:
    """Options of one im node. Defaults follow the original service (FACTS.md)."""

    host: str = attrs.field(default="0.0.0.0", validator=v.instance_of(str))
    http_port: int = attrs.field(default=8080, converter=int, validator=_port)
    rpc_port: int = attrs.field(default=8081, converter=int, validator=_port)
    codec: str = attrs.field(default="json", validator=v.in_(CODECS))
    message_type: str = attrs.field(default="text", validator=v.in_(MESSAGE_TYPES))
    heartbeat_interval: float = attrs.field(default=120.0, converter=float, validator=_positive)
    bucket_number: int = attrs.field(default=64, converter=int, validator=_positive)
    bucket_size: int = attrs.field(default=256, converter=int, validator=_positive)
    # Frames a connection may hold back while its socket takes nothing more; past
    # this the connection is closed as a slow consumer.
    client_buffer: int = attrs.field(default=8, converter=int, validator=_positive)
    # Byte bound on the same backlog (frames not yet taken by the kernel).
    client_buffer_bytes: int = attrs.field(default=1 << 20, converter=int, validator=_positive)
    broadcast_buffer: int = attrs.field(default=200, converter=int, validator=_positive)
    broadcast_workers: int = attrs.field(default=10, converter=int, validator=_positive)
    # Largest frame a client may send (bytes); bigger ones close with 1009.
    max_frame_size: int = attrs.field(default=64 * 1024, converter=int, validator=_positive)
    # Largest payload a backend may push (bytes).
    max_message_size: int = attrs.field(default=64 * 1024, converter=int, validator=_positive)
    ack_interval: float = attrs.field(default=5.0, converter=float, validator=_positive)
    ack_max_tries: int = attrs.field(default=3, converter=int, validator=_positive)
    # Unacked messages kept for a user who is offline, redelivered on reconnect.
    ack_keep_offline: float = attrs.field(default=60.0, converter=float, validator=_positive)
    tag_cleanup_interval: float = attrs.field(default=20.0, converter=float, validator=_positive)
    tag_empty_ttl: float = attrs.field(default=60.0, converter=float, validator=_positive)
    drain_timeout: float = attrs.field(default=5.0, converter=float, validator=_positive)
    broker: str = attrs.field(default="memory", validator=v.instance_of(str))
    node_id: int | None = attrs.field(default=None, converter=attrs.converters.optional(int))
    api_key: str | None = attrs.field(default=None)
    plugins: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    plugin: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.codec == "protobuf" and self.message_type == "text":
            raise ValueError(
                "message_type: protobuf frames are binary; text frames must be UTF-8 "
                "(use --message-type binary with --codec protobuf)"
            )
        if self.node_id is not None and not 0 <= int(self.node_id) < 1024:
            raise ValueError(f"node_id must be 0-1023, got {self.node_id!r}")

    @property
    def sweep_interval(self) -> float:
        """How often each bucket checks liveness: often enough to catch 2 x interval."""
        return min(10.0, self.heartbeat_interval / 2)


#: Fields the CLI, environment and TOML file may set, with their help text.
HELP: dict[str, str] = {
    "host": "address to listen on",
    "http_port": "WebSocket + HTTP API port",
    "rpc_port": "gRPC port",
    "codec": "default codec for server->client frames: json|protobuf",
    "message_type": "default WebSocket frame type: text|binary",
    "heartbeat_interval": "seconds; a connection silent for 2x this is closed",
    "bucket_number": "number of connection buckets (shards)",
    "bucket_size": "expected connections per bucket (sizing hint)",
    "client_buffer": "frames a congested connection may hold back before it is closed",
    "client_buffer_bytes": "bytes a congested connection may hold back before it is closed",
    "broadcast_buffer": "capacity of the broadcast queue",
    "broadcast_workers": "workers serving the broadcast queue",
    "max_frame_size": "largest client frame in bytes",
    "max_message_size": "largest pushed payload in bytes",
    "ack_interval": "seconds between re-sends of an unacked message",
    "ack_max_tries": "sends of an acked message before it expires",
    "ack_keep_offline": "seconds unacked messages wait for an offline user to return",
    "tag_cleanup_interval": "seconds between sweeps of empty tag groups",
    "tag_empty_ttl": "an empty tag group older than this many seconds is dropped",
    "drain_timeout": "seconds to wait for queues to drain on shutdown",
    "broker": "broker plugin: memory (single node), redis, nats",
    "node_id": "node number 0-1023 (default: chosen by the broker)",
    "api_key": "key the push APIs require (Bearer / X-API-Key / x-api-key)",
}
