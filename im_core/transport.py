"""The transport contracts.

``Transport``: something that listens (WebSocket + HTTP, gRPC, ...). Transports are
contributed through ``im_register_transports`` and started in hook call order; on
shutdown they stop accepting first, then close.

``Framing``: how a client transport puts the codec's bytes on its wire. The core
deals in codec bytes and im's close codes; it never builds a transport's frames. A
client transport hands one ``Framing`` per kind of wire to
``server.connections.format_for`` and gets a ``Format`` back: the core frames each
push once per format with ``message`` and writes those shared bytes to every
connection of that format (``Writer.write``), and writes ``probe`` to a connection
that has been silent. Closing goes through the connection's closer (see
``im_core.connection.Closer``), which the transport implements with its own close
frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .server import Server


class Framing(Protocol):
    name: str
    #: Bytes that ask a silent client for a sign of life (a WebSocket ping).
    probe: bytes

    def message(self, data: bytes, binary: bool, sid: int) -> bytes:
        """One message carrying ``data`` (the codec's bytes) as the wire frames it;
        ``binary`` is the connection's frame kind (text frames carry UTF-8) and
        ``sid`` the push's sid (0: no ack wanted), for wires that label messages."""
        ...


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
