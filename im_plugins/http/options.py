"""The HTTP plugin's options: its port and what one client or caller may take
there (docs/protocol.md and docs/api.md, "Limits")."""

from __future__ import annotations

import attrs

from im_core.options import not_negative, option, port, positive


@attrs.define(kw_only=True)
class HttpOptions:
    http_port: int = option(8080, "WebSocket + HTTP API port", converter=int, validator=port)
    max_frame_size: int = option(
        64 << 10,
        "largest client message in bytes (all fragments); past it: close 1009",
        converter=int,
        validator=positive,
    )
    max_fragments: int = option(
        1024,
        "most fragments in one client message (else close 1009)",
        converter=int,
        validator=positive,
    )
    max_inbound_rate: int = option(
        1000,
        "frames a connection may send per second, 0 = no limit (else close 4002)",
        converter=int,
        validator=not_negative,
    )
    idle_timeout: float = option(
        10.0,
        "seconds a new socket may stay silent before it is closed",
        converter=float,
        validator=positive,
    )
    header_timeout: float = option(
        10.0,
        "seconds from a request head's first byte to its end (else 408)",
        converter=float,
        validator=positive,
    )
    body_timeout: float = option(
        30.0,
        "seconds an API request body may take; push_stream: between chunks (408)",
        converter=float,
        validator=positive,
    )
    keepalive_timeout: float = option(
        75.0,
        "seconds an idle keep-alive API connection stays open",
        converter=float,
        validator=positive,
    )
    max_header_size: int = option(
        16 << 10, "largest request head in bytes (else 431)", converter=int, validator=positive
    )
    max_headers: int = option(
        100, "most header fields in a request (else 431)", converter=int, validator=positive
    )
    max_connections: int = option(
        0,
        "open sockets on the HTTP port, 0 = the open-files limit less a reserve (503)",
        converter=int,
        validator=not_negative,
    )
    max_connections_per_ip: int = option(
        0,
        "open sockets per client address, 0 = no limit (else 429)",
        converter=int,
        validator=not_negative,
    )
    max_connect_rate_per_ip: int = option(
        0,
        "new sockets per second per client address, 0 = no limit (else 429)",
        converter=int,
        validator=not_negative,
    )
    max_stream_body: int = option(
        64 << 20,
        "largest HTTP push_stream body in bytes (else 413)",
        converter=int,
        validator=positive,
    )
