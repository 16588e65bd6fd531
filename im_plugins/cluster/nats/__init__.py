"""NATS broker plugin: ``im-run --broker nats --nats-url nats://HOST:4222``.

Needs a NATS server with JetStream (``nats-server -js``) and the ``nats-py`` package
(``pip install 'im[nats]'``), imported only when this broker is selected. See
docs/cluster.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from im_core import hookimpl

from ..options import ClusterOptions, NatsOptions, broker_settings, hold_ttl

if TYPE_CHECKING:
    from im_core.broker import Broker
    from im_core.server import Server


@hookimpl
def im_add_options(add: Callable[..., None]) -> None:
    add(ClusterOptions)
    add(NatsOptions)


@hookimpl
def im_broker(server: Server) -> Broker | None:
    if server.options.broker != "nats":
        return None
    try:
        from .broker import NatsBroker
    except ImportError as exc:
        from im_core.server import ConfigError

        raise ConfigError(
            f"broker nats: cannot import {exc.name!r} (pip install 'im[nats]')"
        ) from exc

    opts = server.options
    return NatsBroker(broker_settings(opts, NatsOptions), opts.node_id, hold_ttl(opts))
