"""Every hook of im, in one place.

Hooks run in the node's event loop. Any hook may return an awaitable instead of a
value; the core awaits it (``await_me_maybe``), so implementations may be plain
functions or ``async def``. Implement only the arguments you need: pluggy passes
hook arguments by name.

Hooks marked *firstresult* stop at the first implementation that returns
something other than ``None`` (plugins registered later are asked first, so an
installed plugin overrides a built-in one); they must return their answer, not a
coroutine. ``im_validate`` has the same "first answer wins" rule for async
implementations too (see there). *historic* hooks are replayed to plugins
registered late.

Hook wrappers (``@hookimpl(wrapper=True)``) see what implementations return: for
an ``async def`` implementation that is a coroutine, not its result, so they can
count calls but not time or inspect async results. Instrument the connection
lifecycle with the hooks themselves (``im_connected``, ``im_disconnected``,
``im_validate_failed``, the ack hooks).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .ack import AckOutcome
    from .broker import Broker
    from .codec import Codec
    from .connection import Connection
    from .identity import ConnectRequest, Identity, Reject
    from .server_api import ServerAPI
    from .transport import Transport

    # The HTTP plugin's handler type (an aiohttp handler); the core names no HTTP library.
    HttpHandler = Callable[[Any], Awaitable[Any]]

hookspec = pluggy.HookspecMarker("im")
hookimpl = pluggy.HookimplMarker("im")


# --- configuration -----------------------------------------------------------


@hookspec(historic=True)
def im_add_options(add: Callable[..., None]) -> None:
    """Declare a plugin's options: ``add(MyOptions)`` with an attrs class whose
    fields are made with ``im_core.options.option(default, help, converter=...,
    validator=...)``.

    Each field becomes a CLI flag (``--name-with-dashes``), an environment variable
    (``IM_NAME``) and a TOML key, validated by its own converter and validator (use
    ``im_core.options.to_bool`` for booleans). Read the values with
    ``server.options.of(MyOptions)``. Field names share one namespace with the
    node's own options: prefix them with the plugin's name.
    """


@hookspec
def im_register_codecs(register: Callable[[Codec], None]) -> None:
    """Contribute codecs: call ``register(codec)`` for each (see ``im_core.codec.Codec``).

    Called once at startup. A codec's ``name`` is what clients ask for with
    ``?codec=NAME``; of two codecs with one name, the plugin registered later wins.
    """


@hookspec
def im_register_transports(register: Callable[[Transport], None], server: ServerAPI) -> None:
    """Contribute transports (listeners): call ``register(transport)`` for each.

    Called once at startup; transports are started in the order they are
    registered (hook call order: plugins registered later first) and stopped in
    reverse order. See ``im_core.transport.Transport``.
    """


@hookspec
def im_http_routes(add_get: Callable[[str, HttpHandler], None], server: ServerAPI) -> None:
    """Add GET routes to the HTTP port: ``add_get(path, handler)`` with an aiohttp
    handler (``async def handler(request) -> web.StreamResponse``). ``server`` is
    the node whose port it is (a handler that needs it keeps it, e.g. in a closure).

    Called synchronously while the HTTP plugin builds its application (before it
    listens), so implementations must not be ``async def``. Paths must not clash
    with the built-in ones (``/conn``, ``/sse``, ``/api/v1/...``): aiohttp refuses a
    duplicate route at startup.
    """


@hookspec(firstresult=True)
def im_broker(server: ServerAPI) -> Broker | None:
    """Return the broker for this node, or ``None`` if ``server.options.broker``
    does not name yours. Called once at startup; the first non-None result wins.
    """


# --- lifecycle -----------------------------------------------------------------


@hookspec
def im_startup(server: ServerAPI) -> None:
    """The node is about to serve: the broker is connected, transports are made
    but do not listen yet (as aiohttp's ``on_startup``).

    Use it to check a plugin's settings and start its own background work. All
    implementations run, in order. Raise ``im_core.ConfigError("why")`` to refuse
    to start: ``im-run`` prints ``plugin 'NAME': why`` and exits with status 2; any
    other exception aborts the start the same way (``plugin 'NAME' failed to start:
    ...``). Nothing has listened by then.
    """


@hookspec
def im_shutdown(server: ServerAPI) -> None:
    """The node is shutting down: connections are closed, the broker is still
    connected. Release what ``im_startup`` acquired. Exceptions are logged."""


# --- connections ---------------------------------------------------------------


@hookspec
def im_validate(server: ServerAPI, request: ConnectRequest) -> Identity | Reject | None:
    """Authenticate a connection attempt before the WebSocket upgrade.

    ``request`` carries the token, query, headers and remote address. Return an
    ``Identity`` (user id, tags, metadata) to accept, a ``Reject`` (status, reason)
    to refuse with that HTTP status and a JSON body, or ``None`` when the request
    is not yours to judge. Implementations are asked in hook call order (plugins
    registered later first) and the first answer that is not ``None`` decides —
    also for ``async def`` implementations, which is why this hook is not
    *firstresult* (pluggy would stop at the first coroutine). If every
    implementation returns ``None`` the attempt is refused with 401. The default
    (``im_plugins.token_auth``) accepts any non-empty token as the user id: a
    development default.
    """


@hookspec
def im_validate_failed(server: ServerAPI, request: ConnectRequest, reject: Reject) -> None:
    """A connection attempt was refused (``reject`` says why). For logging,
    metrics or rate limiting; the refusal itself is already decided."""


@hookspec
def im_connected(server: ServerAPI, conn: Connection) -> None:
    """A connection was upgraded and registered (any older login of the same user
    has been replaced). Awaited before the connection's first frame is read."""


@hookspec
def im_disconnected(server: ServerAPI, conn: Connection, code: int, reason: str) -> None:
    """A connection closed, for any reason; ``code`` is the WebSocket close code
    (``im_core.errors.CloseCode``) and ``reason`` a short text. Called once per
    connection, after it left its bucket and tag groups."""


@hookspec
def im_receive(server: ServerAPI, conn: Connection, data: bytes, binary: bool) -> None:
    """Business data from a client: exactly the bytes it sent (for the protobuf
    codec, the ``data`` field of its ``ClientFrame``). Acks never arrive here.
    ``binary`` tells whether it came in a binary (True) or a text frame (False).
    ``conn.reply(data, binary=binary)`` answers on the same connection in the same
    kind of frame.

    Awaited in the connection's read loop, so a slow handler slows only its own
    connection's reads. Every message that arrived before the connection closed is
    handed over, in order, before ``im_disconnected`` runs for it (``conn.closed``
    may already be true then: replies to a closed connection are dropped).
    """


# --- acks ----------------------------------------------------------------------
#
# Where they fire: ``im_acked`` / ``im_ack_expired`` on the node that tracks the
# receipt (the one the user is connected to, or last was; in a cluster the entries
# follow a user who reconnects elsewhere, and so do these hooks). ``im_ack_outcome``
# on the node that allocated the sid (the one whose push API took the push), once
# per user and sid, wherever the user was. On a single node all three fire there.


@hookspec
def im_acked(server: ServerAPI, user_id: str, sid: int, device: str) -> None:
    """``user_id`` acknowledged the push ``sid``; no more re-sends happen. Fires on
    the node that tracked the receipt (see ``im_ack_outcome`` for the pushing node).
    ``device``: which of the user's devices (each has its own ack state with
    ``--max-connections-per-user`` above 1; otherwise empty)."""


@hookspec
def im_ack_expired(
    server: ServerAPI,
    user_id: str,
    sid: int,
    payload: bytes,
    tries: int,
    reason: str,
    device: str,
) -> None:
    """The push ``sid`` to ``user_id`` was not acknowledged: after ``tries`` sends
    (``reason="max_tries"``) or because the user stayed offline
    (``reason="offline"``). ``payload`` lets a backend store it for later. Fires on
    the node that tracked the receipt; ``device`` as for ``im_acked``."""


@hookspec
def im_ack_outcome(server: ServerAPI, outcome: AckOutcome) -> None:
    """How the push ``outcome.sid`` ended for ``outcome.user_id`` (``"acked"`` or
    ``"expired"`` with ``reason``, ``tries`` and, for expired, ``payload``).

    Fires on the node that allocated the sid, whichever node tracked the receipt:
    the tracking node sends it there through the broker (best effort: lost if that
    node is gone or the broker is unreachable). The push APIs' ack event streams
    get the same outcome from ``Server.outcomes``, not from this hook.
    """
