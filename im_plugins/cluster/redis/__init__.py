"""Redis broker plugin: ``im-run --broker redis --redis-url redis://HOST:6379/0``.

The ``redis`` package (``pip install 'im[redis]'``) is imported only when this
broker is selected, so im runs without it otherwise. See docs/cluster.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from im_core import hookimpl

from ..options import add_options, hold_ttl

if TYPE_CHECKING:
    from im_core.broker import Broker
    from im_core.server import Server


@hookimpl
def im_add_options(add: Callable[..., None]) -> None:
    add("redis_url", "redis://127.0.0.1:6379/0", "Redis URL of the redis broker")
    add_options(add)


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
    return RedisBroker(opts.plugin, opts.node_id, hold_ttl(opts))
