"""Server options: typed, validated, with the original service's defaults.

Every field is settable from the command line (``--http-port``), the environment
(``IM_HTTP_PORT``) and a TOML file (``http_port = 8080``); see ``im_core.cli``.
Plugins add their own options through the ``im_add_options`` hook; their values
live in ``Options.plugin``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from attrs import validators as v

CODECS = ("json", "protobuf")
MESSAGE_TYPES = ("text", "binary")


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _not_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _port(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be a port number 0-65535, got {value!r}")


@attrs.define(kw_only=True)
class Options:
    """Options of one im node. Defaults follow the original service (its README and behaviour)."""

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
    # Largest message a client may send (bytes, all fragments together); past it: 1009.
    max_frame_size: int = attrs.field(default=64 * 1024, converter=int, validator=_positive)
    # Largest payload a backend may push (bytes). gRPC's default receive size, so
    # every payload the original service accepted is accepted; the gRPC receive
    # limit and the HTTP body limit follow it (plus framing, base64 and JSON).
    max_message_size: int = attrs.field(default=4 << 20, converter=int, validator=_positive)
    ack_interval: float = attrs.field(default=5.0, converter=float, validator=_positive)
    ack_max_tries: int = attrs.field(default=3, converter=int, validator=_positive)
    # Unacked messages kept for a user who is offline, redelivered on reconnect.
    ack_keep_offline: float = attrs.field(default=60.0, converter=float, validator=_positive)
    tag_cleanup_interval: float = attrs.field(default=20.0, converter=float, validator=_positive)
    tag_empty_ttl: float = attrs.field(default=60.0, converter=float, validator=_positive)
    drain_timeout: float = attrs.field(default=5.0, converter=float, validator=_positive)
    # --- edge limits: what one client or caller may take (docs/protocol.md, "Limits")
    # A socket that sends no byte this long after it was accepted is closed unanswered.
    idle_timeout: float = attrs.field(default=10.0, converter=float, validator=_positive)
    # Time from accept to the end of the first request's head; past it: 408.
    header_timeout: float = attrs.field(default=10.0, converter=float, validator=_positive)
    # Time an API request's body may take (a gap between chunks for push_stream); 408.
    body_timeout: float = attrs.field(default=30.0, converter=float, validator=_positive)
    # An idle keep-alive API connection (or a later request head) is closed after this.
    keepalive_timeout: float = attrs.field(default=75.0, converter=float, validator=_positive)
    max_header_size: int = attrs.field(default=16 << 10, converter=int, validator=_positive)
    max_headers: int = attrs.field(default=100, converter=int, validator=_positive)
    # Fragments one client message may be split into; past it: 1009.
    max_fragments: int = attrs.field(default=1024, converter=int, validator=_positive)
    # Frames (any kind) one connection may send per second; past it: 4002. 0 = no limit.
    max_inbound_rate: int = attrs.field(default=1000, converter=int, validator=_not_negative)
    max_user_id_length: int = attrs.field(default=256, converter=int, validator=_positive)
    max_tags: int = attrs.field(default=256, converter=int, validator=_positive)
    # Open sockets on the HTTP port (0 = the open-files limit less a reserve); past it: 503.
    max_connections: int = attrs.field(default=0, converter=int, validator=_not_negative)
    # Open sockets per client address (0 = no limit: NAT puts many users behind one); 429.
    max_connections_per_ip: int = attrs.field(default=0, converter=int, validator=_not_negative)
    # New sockets per second per client address (0 = no limit); past it: 429.
    max_connect_rate_per_ip: int = attrs.field(default=0, converter=int, validator=_not_negative)
    # Total bytes of one HTTP push_stream body; past it: 413.
    max_stream_body: int = attrs.field(default=64 << 20, converter=int, validator=_positive)
    # Concurrent gRPC calls (unary and streams) on the gRPC port; past it: RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = attrs.field(default=10_000, converter=int, validator=_positive)
    broker: str = attrs.field(default="memory", validator=v.instance_of(str))
    node_id: int | None = attrs.field(default=None, converter=attrs.converters.optional(int))
    api_key: str | None = attrs.field(default=None)
    plugins: tuple[str, ...] = attrs.field(default=(), converter=_strings)
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
    "max_frame_size": "largest client message in bytes (all fragments); past it: close 1009",
    "max_message_size": "largest pushed payload in bytes (HTTP body and gRPC limits follow)",
    "ack_interval": "seconds between re-sends of an unacked message",
    "ack_max_tries": "sends of an acked message before it expires",
    "ack_keep_offline": "seconds unacked messages wait for an offline user to return",
    "tag_cleanup_interval": "seconds between sweeps of empty tag groups",
    "tag_empty_ttl": "an empty tag group older than this many seconds is dropped",
    "drain_timeout": "seconds to wait for queues to drain on shutdown",
    "idle_timeout": "seconds a new socket may stay silent before it is closed",
    "header_timeout": "seconds from accept to a complete request head (else 408)",
    "body_timeout": "seconds an API request body may take; push_stream: between chunks (408)",
    "keepalive_timeout": "seconds an idle keep-alive API connection stays open",
    "max_header_size": "largest request head in bytes (else 431)",
    "max_headers": "most header lines in a request (else 431)",
    "max_fragments": "most fragments in one client message (else close 1009)",
    "max_inbound_rate": "frames a connection may send per second, 0 = no limit (else 4002)",
    "max_user_id_length": "longest user id a validate plugin may return (else 400)",
    "max_tags": "most tags on one connection (else 400)",
    "max_connections": "open sockets on the HTTP port, 0 = open-files limit less a reserve (503)",
    "max_connections_per_ip": "open sockets per client address, 0 = no limit (else 429)",
    "max_connect_rate_per_ip": "new sockets per second per client address, 0 = no limit (429)",
    "max_stream_body": "largest HTTP push_stream body in bytes (else 413)",
    "max_concurrent_rpcs": "concurrent gRPC calls (else RESOURCE_EXHAUSTED)",
    "broker": "broker plugin: memory (single node), redis, nats",
    "node_id": "node number 0-1023 (default: chosen by the broker)",
    "api_key": "key the push APIs require (Bearer / X-API-Key / x-api-key)",
}
