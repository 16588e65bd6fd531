"""The transport contract: something that listens (WebSocket + HTTP, gRPC, ...).

Transports are contributed through ``im_register_transports`` and started in
registration order; on shutdown they stop accepting first, then close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .server import Server


class Transport(Protocol):
    name: str

    async def start(self, server: Server) -> None:
        """Bind and start serving."""
        ...

    async def stop_accepting(self) -> None:
        """Stop taking new connections and calls; in-flight work continues."""
        ...

    async def close(self) -> None:
        """Finish in-flight calls and release every resource."""
        ...
