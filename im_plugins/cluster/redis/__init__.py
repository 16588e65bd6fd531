"""Redis broker plugin: ``im-run --broker redis --redis-url redis://HOST:6379/0``.

The ``redis`` package (``pip install 'im[redis]'``) is imported only when this
broker is selected, so im runs without it otherwise. See docs/cluster.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from im_core import hookimpl

from ..options import ClusterOptions, RedisOptions, broker_settings, hold_ttl

if TYPE_CHECKING:
    from im_core.broker import Broker
    from im_core.server import Server


@hookimpl
def im_add_options(add: Callable[..., None]) -> None:
    add(ClusterOptions)
    add(RedisOptions)


@hookimpl
def im_broker(server: Server) -> Broker | None:
    if server.options.broker != "redis":
        return None
    try:
        from .broker import RedisBroker
    except ImportError as exc:
        from im_core.server import ConfigError

        raise ConfigError(
            f"broker redis: cannot import {exc.name!r} (pip install 'im[redis]')"
        ) from exc

    opts = server.options
    return RedisBroker(broker_settings(opts, RedisOptions), opts.node_id, hold_ttl(opts))
