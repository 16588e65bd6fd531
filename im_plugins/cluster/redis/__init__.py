"""Redis broker plugin: ``im-run --broker redis --redis-url redis://HOST:6379/0``.

The ``redis`` package (``pip install 'im[redis]'``) is imported only when this
broker is selected, so im runs without it otherwise. See docs/cluster.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from im_core import hookimpl

from ..options import ClusterOptions, RedisOptions, make_broker

if TYPE_CHECKING:
    from im_core.broker import Broker
    from im_core.server import Server


@hookimpl
def im_add_options(add: Callable[..., None]) -> None:
    add(ClusterOptions)
    add(RedisOptions)


@hookimpl
def im_broker(server: Server) -> Broker | None:
    return make_broker(server, "redis", RedisOptions, _load)  # type: ignore[no-any-return]


def _load() -> type[Broker]:
    from .broker import RedisBroker

    return RedisBroker
