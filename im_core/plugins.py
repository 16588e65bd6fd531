"""The plugin manager factory and the typed façade the core calls hooks through.

Load order: hook specs -> built-in plugins (``DEFAULT_PLUGINS``) -> entry points of
the group ``im`` (unless ``IM_DISABLE_PLUGIN_AUTOLOAD`` is set) -> plugins named
with ``--plugin``. ``--plugin no:NAME`` blocks a plugin by name, built-in or not.
Later registrations are asked first by firstresult hooks, so an installed plugin
overrides a built-in one. ``IM_TRACE_HOOKS=1`` logs every hook call.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import pluggy

from . import hookspecs

if TYPE_CHECKING:
    from .ack import AckOutcome
    from .broker import Broker
    from .codec import Codec
    from .connection import Connection
    from .identity import ConnectRequest, Identity, Reject
    from .server import Server
    from .transport import Transport

log = logging.getLogger("im.plugins")
T = TypeVar("T")

ENTRY_POINT_GROUP = "im"
AUTOLOAD_ENV = "IM_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "IM_TRACE_HOOKS"

#: Built-in plugins: (name, module). Registered exactly like external ones.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("memory_broker", "im_plugins.memory_broker"),
    ("redis_broker", "im_plugins.cluster.redis"),
    ("nats_broker", "im_plugins.cluster.nats"),
    ("json_codec", "im_plugins.json_codec"),
    ("protobuf_codec", "im_plugins.protobuf_codec"),
    ("token_auth", "im_plugins.token_auth"),
    ("http", "im_plugins.http"),
    ("grpc", "im_plugins.grpc"),
)


#: Built-in plugins loaded only when named (``--plugin demo``): name -> module.
OPTIONAL_PLUGINS: dict[str, str] = {"demo": "im_plugins.demo"}


class PluginError(Exception):
    """A plugin named on the command line could not be loaded."""


def get_plugin_manager(
    plugins: Iterable[str] = (), *, autoload: bool | None = None
) -> pluggy.PluginManager:
    """Build the plugin manager: specs, built-ins, entry points, then ``plugins``."""
    pm = pluggy.PluginManager("im")
    pm.add_hookspecs(hookspecs)
    plugins = list(plugins)
    for spec in plugins:
        if spec.startswith("no:"):
            pm.set_blocked(spec[3:])
    for name, module in DEFAULT_PLUGINS:
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module), name)
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    if autoload:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for spec in plugins:
        if not spec.startswith("no:"):
            load_plugin(pm, spec)
    pm.check_pending()
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(log.info)
        pm.enable_tracing()
    return pm


def load_plugin(pm: pluggy.PluginManager, spec: str) -> None:
    """Register the plugin ``spec``: an optional built-in's name, an entry-point name
    of the group ``im``, or a dotted module path."""
    if pm.has_plugin(spec) or pm.is_blocked(spec):
        return
    if spec in OPTIONAL_PLUGINS:
        pm.register(importlib.import_module(OPTIONAL_PLUGINS[spec]), spec)
        return
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            try:
                pm.register(ep.load(), spec)
            except Exception as exc:
                raise PluginError(f"cannot load plugin {spec!r}: {exc}") from exc
            return
    try:
        module = importlib.import_module(spec)
    except ImportError as exc:
        raise PluginError(
            f"cannot load plugin {spec!r}: no entry point of that name in group "
            f"{ENTRY_POINT_GROUP!r} and no importable module ({exc})"
        ) from exc
    pm.register(module, spec)


def plugin_table(pm: pluggy.PluginManager) -> list[tuple[str, list[str]]]:
    """(plugin name, hooks it implements) for every registered plugin."""
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked with no:NAME
            rows.append((name, ["(blocked)"]))
            continue
        callers = pm.get_hookcallers(plugin) or []
        rows.append((name, sorted(c.name for c in callers)))
    return rows


async def await_me_maybe(value: T | Awaitable[T] | Callable[[], Any]) -> T:
    """Accept a value, a coroutine/awaitable or a zero-argument callable."""
    if callable(value) and not inspect.isawaitable(value):
        value = value()
    if inspect.isawaitable(value):
        value = await value
    return value  # type: ignore[return-value]


class Hooks:
    """One method per hook, so the core never calls ``pm.hook.x(**kwargs)`` itself.

    Every hook goes through pluggy's hook caller (so ``IM_TRACE_HOOKS`` and hook
    wrappers see every call), and implementations may be plain or ``async def``.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._hook = pm.hook

    @property
    def has_receive(self) -> bool:
        """Whether anyone implements ``im_receive`` now (a plugin may come late)."""
        return bool(self._hook.im_receive.get_hookimpls())

    def option_classes(self) -> list[type]:
        """The options classes plugins declared (each once, in declaration order)."""
        found: list[type] = []

        def add(cls: type) -> None:
            if not attrs.has(cls):
                raise TypeError(f"im_add_options: add() takes an attrs class, got {cls!r}")
            if cls not in found:  # several plugins may share one class
                found.append(cls)

        self._hook.im_add_options.call_historic(kwargs={"add": add})
        return found

    def codecs(self) -> dict[str, Codec]:
        found: dict[str, Codec] = {}
        # Plugins registered later are called first: the first codec of a name wins,
        # so an installed plugin overrides a built-in one.
        self._hook.im_register_codecs(register=lambda c: found.setdefault(c.name, c))
        return found

    def transports(self, server: Server) -> list[Transport]:
        found: list[Transport] = []
        self._hook.im_register_transports(register=found.append, server=server)
        return found

    def http_routes(self, add_get: Callable[[str, Any], None]) -> None:
        """GET routes for the HTTP port; the hook is synchronous (the app is being built)."""
        for result in self._hook.im_http_routes(add_get=add_get):
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError("im_http_routes must be a plain function, not async")

    def broker(self, server: Server) -> Broker | None:
        return self._hook.im_broker(server=server)  # type: ignore[no-any-return]

    async def _all(self, caller: Any, **kwargs: Any) -> list[Any]:
        return [await await_me_maybe(r) for r in caller(**kwargs)]

    async def startup(self, server: Server) -> None:
        await self._all(self._hook.im_startup, server=server)

    async def shutdown(self, server: Server) -> None:
        for r in self._hook.im_shutdown(server=server):
            try:
                await await_me_maybe(r)
            except Exception:
                log.exception("im_shutdown hook failed")

    async def validate(self, server: Server, request: ConnectRequest) -> Identity | Reject | None:
        """The first answer that is not None, in hook call order (datasette's
        ``actor_from_request``): an async implementation returning None falls through."""
        results: list[Any] = self._hook.im_validate(server=server, request=request)
        answer = None
        asked = 0
        try:
            for result in results:
                asked += 1
                answer = await await_me_maybe(result)
                if answer is not None:
                    break
        finally:
            for later in results[asked:]:  # not asked: their coroutines are dropped
                if inspect.iscoroutine(later):
                    later.close()
        return answer

    async def validate_failed(
        self, server: Server, request: ConnectRequest, reject: Reject
    ) -> None:
        await self._all(
            self._hook.im_validate_failed, server=server, request=request, reject=reject
        )

    async def connected(self, server: Server, conn: Connection) -> None:
        await self._all(self._hook.im_connected, server=server, conn=conn)

    async def disconnected(self, server: Server, conn: Connection, code: int, reason: str) -> None:
        await self._all(
            self._hook.im_disconnected, server=server, conn=conn, code=code, reason=reason
        )

    async def receive(self, server: Server, conn: Connection, data: bytes, binary: bool) -> None:
        await self._all(self._hook.im_receive, server=server, conn=conn, data=data, binary=binary)

    async def acked(self, server: Server, user_id: str, sid: int, device: str = "") -> None:
        await self._all(
            self._hook.im_acked, server=server, user_id=user_id, sid=sid, device=device
        )

    async def ack_expired(
        self,
        server: Server,
        user_id: str,
        sid: int,
        payload: bytes,
        tries: int,
        reason: str,
        device: str = "",
    ) -> None:
        await self._all(
            self._hook.im_ack_expired,
            server=server,
            user_id=user_id,
            sid=sid,
            payload=payload,
            tries=tries,
            reason=reason,
            device=device,
        )

    async def ack_outcome(self, server: Server, outcome: AckOutcome) -> None:
        await self._all(self._hook.im_ack_outcome, server=server, outcome=outcome)
