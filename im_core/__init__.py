"""im: a real-time push server core. Plugins use ``hookimpl`` from here."""

from .errors import CloseCode, ConfigError
from .hookspecs import hookimpl
from .identity import ConnectRequest, Identity, Reject
from .options import Options
from .server import Server

__all__ = [
    "CloseCode",
    "ConfigError",
    "ConnectRequest",
    "Identity",
    "Options",
    "Reject",
    "Server",
    "hookimpl",
]
