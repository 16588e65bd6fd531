"""Options of the cluster brokers: what every cluster broker reads
(``ClusterOptions``, declared by both broker plugins) and each broker's URL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from attrs import validators as v

from im_core.options import option, positive


@attrs.define(kw_only=True)
class ClusterOptions:
    broker_prefix: str = option(
        "im",
        "namespace of the cluster's keys/channels/subjects; clusters sharing one "
        "broker need distinct prefixes",
        validator=v.instance_of(str),
    )
    presence_ttl: float = option(
        10.0,
        "seconds a node's presence outlives its last heartbeat (heartbeat every ttl/3)",
        converter=float,
        validator=positive,
    )
    broker_timeout: float = option(
        1.0,
        "seconds to wait for the broker or a peer node before failing with UNAVAILABLE",
        converter=float,
        validator=positive,
    )
    node_links: str = option(
        "",
        "directory of Unix sockets through which the nodes of one machine send each "
        "other requests directly instead of through the broker (im-run --workers sets "
        "it); empty: through the broker",
        validator=v.instance_of(str),
    )


def url_of(*schemes: str) -> Callable[[Any, attrs.Attribute[Any], str], None]:
    """A validator: comma-separated URLs with one of ``schemes`` and a host (or a
    path, for ``unix``)."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        for url in value.split(","):
            parts = urlsplit(url.strip())
            if parts.scheme not in schemes or not (parts.hostname or parts.path):
                want = ", ".join(f"{s}://" for s in schemes)
                raise ValueError(f"{attribute.name} must be a URL ({want}), got {url.strip()!r}")

    return check


def without_secrets(urls: str) -> str:
    """``urls`` fit for a log: a user, password or token in them shown as ``***``."""
    shown = []
    for url in urls.split(","):
        parts = urlsplit(url.strip())
        if parts.username or parts.password:
            host = parts.netloc.rsplit("@", 1)[1]
            url = parts._replace(netloc="***@" + host).geturl()
        shown.append(url.strip())
    return ",".join(shown)


@attrs.define(kw_only=True)
class RedisOptions:
    redis_url: str = option(
        "redis://127.0.0.1:6379/0",
        "Redis URL of the redis broker",
        validator=[v.instance_of(str), url_of("redis", "rediss", "unix")],
    )


@attrs.define(kw_only=True)
class NatsOptions:
    nats_url: str = option(
        "nats://127.0.0.1:4222",
        "NATS URL of the nats broker (JetStream enabled; several: comma-separated)",
        validator=[v.instance_of(str), url_of("nats", "tls", "ws", "wss")],
    )


def make_broker(server: Any, name: str, own: type, load: Callable[[], Any]) -> Any:
    """The broker ``name`` if ``--broker`` asks for it: ``load()`` imports its class
    (only then, so im runs without the client library), built from the cluster's
    and its own options."""
    if server.options.broker != name:
        return None
    try:
        broker_class = load()
    except ImportError as exc:
        from im_core.server import ConfigError

        hint = f"pip install 'im[{name}]'"
        raise ConfigError(f"broker {name}: cannot import {exc.name!r} ({hint})") from exc
    opts = server.options
    settings = {**attrs.asdict(opts.of(ClusterOptions)), **attrs.asdict(opts.of(own))}
    # The inbox bounds are the core's: the broker enforces them cluster-wide.
    settings.update(
        inbox_max_messages=opts.inbox_max_messages,
        inbox_max_bytes=opts.inbox_max_bytes,
        unacked_ttl=opts.unacked_ttl(),
        inbox_ttl=opts.inbox_ttl,
        max_connections_per_user=opts.max_connections_per_user,
    )
    return broker_class(settings, opts.node_id, hold_ttl(opts))


def hold_ttl(options: Any) -> float:
    """How long a "held" marker outlives the disconnect: an offline user's entries
    expire ``ack_keep_offline`` after the first re-send that found them gone."""
    return float(options.ack_keep_offline + 2 * options.ack_interval + 1.0)
