"""Options: typed attrs classes, validated, with the original service's defaults.

``Options`` holds the node's own settings. Each plugin owns its settings in a class
of its own, declared through the ``im_add_options`` hook (``add(HttpOptions)``)
and read with ``server.options.of(HttpOptions)``. A field's help text travels with
it (``option(default, help, ...)``); the command line (``--http-port``), the
environment (``IM_HTTP_PORT``) and a TOML file (``http_port = 8080``) are all
generated from the fields, core and plugin alike (``im_core.cli``).

Programs that build a server themselves pass plugin settings by name in
``Options(plugin={"http_port": 0})``, or everything flat with
``Options.from_values(http_port=0, heartbeat_interval=5)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import attrs
from attrs import validators as v

MESSAGE_TYPES = ("text", "binary")
T = TypeVar("T")


def option(
    default: Any,
    help: str,
    *,
    converter: Any = None,
    validator: Any = None,
) -> Any:
    """A settable field: flag, ``IM_*`` variable and TOML key, with its help text."""
    return attrs.field(
        default=default, converter=converter, validator=validator, metadata={"help": help}
    )


def positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def not_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def port(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be a port number 0-65535, got {value!r}")


_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off", ""))


def to_bool(value: Any) -> bool:
    """Booleans as people write them in flags, variables and files."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def optional_int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def workers_count(value: Any) -> int:
    """``auto`` is one worker per CPU."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return os.cpu_count() or 1
    return int(value)


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.define(kw_only=True)
class Options:
    """Options of one im node. Defaults follow the original service."""

    host: str = option("0.0.0.0", "address the listeners bind", validator=v.instance_of(str))
    codec: str = option(
        "json",
        "default codec of pushes: json, protobuf, or a plugin's (checked at start)",
        validator=v.instance_of(str),
    )
    message_type: str = option(
        "text", "default frame type of pushes: text|binary", validator=v.in_(MESSAGE_TYPES)
    )
    heartbeat_interval: float = option(
        120.0, "seconds; a connection silent for 2x this is closed", converter=float,
        validator=positive,
    )
    bucket_number: int = option(
        64, "number of connection buckets (shards)", converter=int, validator=positive
    )
    client_buffer: int = option(
        8, "frames a congested connection may hold back before it is closed",
        converter=int, validator=positive,
    )
    client_buffer_bytes: int = option(
        1 << 20, "bytes a congested connection may hold back before it is closed",
        converter=int, validator=positive,
    )
    write_delay: float = option(
        0.0, "ms a connection's frames may wait to be written together (0: every loop turn)",
        converter=float, validator=[not_negative, v.le(1000.0)],
    )
    fanout_slice: int = option(
        100, "connections written per event-loop turn before other work runs",
        converter=int, validator=positive,
    )
    fanout_budget: float = option(
        100.0, "µs of socket writes per event-loop turn before other work runs",
        converter=float, validator=[positive, v.le(1_000_000.0)],
    )
    broadcast_buffer: int = option(
        200, "capacity of the broadcast queue", converter=int, validator=positive
    )
    broadcast_workers: int = option(
        10, "workers serving the broadcast queue", converter=int, validator=positive
    )
    # gRPC's default receive size, so every payload the original service accepted is
    # accepted; the push APIs' request limits follow it (plus framing, base64, JSON).
    max_message_size: int = option(
        4 << 20, "largest pushed payload in bytes (the APIs' request limits follow)",
        converter=int, validator=positive,
    )
    ack_interval: float = option(
        5.0, "seconds between re-sends of an unacked message", converter=float,
        validator=positive,
    )
    ack_max_tries: int = option(
        3, "sends of an acked message before it expires", converter=int, validator=positive
    )
    ack_keep_offline: float = option(
        60.0, "seconds unacked messages wait for an offline user to return",
        converter=float, validator=positive,
    )
    max_connections_per_user: int = option(
        1, "connections one user may hold (1: a new login replaces the old one)",
        converter=int, validator=positive,
    )
    # The offline inbox (docs/protocol.md, "Offline inbox").
    store: bool = option(
        False, "keep pushes to offline users unless a push says store=false",
        converter=to_bool,
    )
    inbox_ttl: float = option(
        86400.0, "seconds a kept push waits for its offline user", converter=float,
        validator=positive,
    )
    inbox_max_messages: int = option(
        100, "messages kept (and unacked) per user; pushes beyond are not kept",
        converter=int, validator=positive,
    )
    inbox_max_bytes: int = option(
        1 << 20, "payload bytes kept (and unacked) per user", converter=int, validator=positive,
    )
    inbox_max_push_bytes: int = option(
        64 << 20, "a cluster broker keeps a push (one copy per user) up to this many bytes",
        converter=int, validator=positive,
    )
    tag_cleanup_interval: float = option(
        20.0, "seconds between sweeps of empty tag groups", converter=float, validator=positive
    )
    tag_empty_ttl: float = option(
        60.0, "an empty tag group older than this many seconds is dropped",
        converter=float, validator=positive,
    )
    drain_timeout: float = option(
        5.0, "seconds to wait for in-flight calls and queued pushes on shutdown",
        converter=float, validator=positive,
    )
    drain_delay: float = option(
        0.0, "seconds /ready answers 503 on shutdown before the drain starts (load balancers)",
        converter=float, validator=not_negative,
    )
    access_log: bool = option(
        False, "log every call of the HTTP and gRPC push APIs (INFO, logger im.access)",
        converter=to_bool,
    )
    max_user_id_length: int = option(
        256, "longest user id a validate plugin may return (else 400)",
        converter=int, validator=positive,
    )
    max_tags: int = option(
        256, "most tags on one connection (else 400)", converter=int, validator=positive
    )
    broker: str = option(
        "memory", "broker plugin: memory (single node), redis, nats",
        validator=v.instance_of(str),
    )
    node_id: int | None = option(
        None, "node number 0-1023 (default: chosen by the broker)", converter=optional_int
    )
    workers: int = option(
        0,
        "N or auto (one per CPU): a supervisor runs N node processes sharing the ports "
        "(0: this process is the node)",
        converter=workers_count,
        validator=not_negative,
    )
    reuse_port: bool = option(
        False,
        "bind the listeners with SO_REUSEPORT, sharing their ports with other processes "
        "of this user (set for each worker by --workers)",
        converter=to_bool,
    )
    api_key: str | None = option(
        None, "key the push APIs require (Bearer / X-API-Key / x-api-key)"
    )
    plugins: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: Plugin settings by name, as given (plugins read them through ``of``).
    plugin: dict[str, Any] = attrs.field(factory=dict)
    _typed: dict[type, Any] = attrs.field(factory=dict, init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.codec == "protobuf" and self.message_type == "text":
            raise ValueError(
                "message_type: protobuf frames are binary; text frames must be UTF-8 "
                "(use --message-type binary with --codec protobuf)"
            )
        if self.node_id is not None and not 0 <= int(self.node_id) < 1024:
            raise ValueError(f"node_id must be 0-1023, got {self.node_id!r}")

    @classmethod
    def from_values(cls, values: Mapping[str, Any] | None = None, **more: Any) -> Options:
        """Options from one flat namespace (as the CLI and TOML have it): the node's
        own fields by name, everything else for the plugins."""
        given = {**(values or {}), **more}
        own = {f.name for f in attrs.fields(cls) if f.init}
        plugin = {k: v for k, v in given.items() if k not in own}
        plugin.update(given.get("plugin", {}))
        return cls(**{k: v for k, v in given.items() if k in own and k != "plugin"}, plugin=plugin)

    def unacked_ttl(self) -> float:
        """How long an acked push may still be tracked after it was sent: every try
        and the wait for an offline user, plus two intervals of slack. A durable
        broker keeps its copy that long (the tracking node ends it first)."""
        return (self.ack_max_tries + 2) * self.ack_interval + self.ack_keep_offline

    def of(self, cls: type[T]) -> T:
        """A plugin's options class filled from ``plugin`` (defaults for the rest)."""
        found = self._typed.get(cls)
        if found is None:
            plugin = self.plugin
            given = {
                f.name: checked(f, plugin[f.name])
                for f in attrs.fields(cls)  # type: ignore[arg-type]
                if f.name in plugin
            }
            found = self._typed[cls] = cls(**given)
        return found

    @property
    def sweep_interval(self) -> float:
        """How often each bucket checks liveness: often enough to catch 2 x interval."""
        return min(10.0, self.heartbeat_interval / 2)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def checked(field: attrs.Attribute[Any], value: Any) -> Any:
    """``value`` converted and validated as ``field`` would; ``ValueError`` naming
    the option's flag otherwise."""
    try:
        if field.converter is not None:
            value = field.converter(value)  # type: ignore[operator]
        if field.validator is not None:
            field.validator(None, field, value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{flag(field.name)}: {exc}") from None
    return value


def settable(cls: type) -> list[attrs.Attribute[Any]]:
    """The fields of an options class that flags, variables and files may set."""
    return [f for f in attrs.fields(cls) if f.init and "help" in f.metadata]
