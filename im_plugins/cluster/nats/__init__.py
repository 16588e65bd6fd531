"""NATS broker plugin: ``im-run --broker nats --nats-url nats://HOST:4222``.

Needs a NATS server with JetStream (``nats-server -js``) and the ``nats-py`` package
(``pip install 'im[nats]'``), imported only when this broker is selected. See
docs/cluster.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from im_core import hookimpl

from ..options import ClusterOptions, NatsOptions, make_broker

if TYPE_CHECKING:
    from im_core.broker import Broker
    from im_core.server import Server


@hookimpl
def im_add_options(add: Callable[..., None]) -> None:
    add(ClusterOptions)
    add(NatsOptions)


@hookimpl
def im_broker(server: Server) -> Broker | None:
    return make_broker(server, "nats", NatsOptions, _load)  # type: ignore[no-any-return]


def _load() -> type[Broker]:
    from .broker import NatsBroker

    return NatsBroker
