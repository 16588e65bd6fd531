"""The plugin manager factory and the typed façade the core calls hooks through.

Load order: hook specs -> built-in plugins (``DEFAULT_PLUGINS``) -> entry points of
the group ``im`` (unless ``IM_DISABLE_PLUGIN_AUTOLOAD`` is set) -> plugins named
with ``--plugin``, in the order named (one loaded already, as an entry point, moves
to its place). ``--plugin no:NAME`` blocks a plugin by name, built-in or not.
Later registrations are asked first by firstresult hooks and ``im_validate``, so an
installed plugin overrides a built-in one and the last ``--plugin`` decides first.
``IM_TRACE_HOOKS=1`` logs every hook call.

A plugin that cannot be loaded (its import fails, or it implements a hook, or a
hook argument, that is not in ``hookspecs``) is named in a ``PluginError``; the
command line can collect such plugins instead (``broken``) to list them.
"""

from __future__ import annotations

import difflib
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
from .errors import StartupFailed

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
OPTIONAL_PLUGINS: dict[str, str] = {
    "demo": "im_plugins.demo",
    "prometheus": "im_plugins.prometheus",  # needs the extra: pip install 'im[metrics]'
}


class PluginError(Exception):
    """A plugin could not be loaded; the message names it."""


def get_plugin_manager(
    plugins: Iterable[str] = (),
    *,
    autoload: bool | None = None,
    broken: dict[str, str] | None = None,
) -> pluggy.PluginManager:
    """Build the plugin manager: specs, built-ins, entry points, then ``plugins``.

    A plugin that cannot be loaded raises ``PluginError``, or, when ``broken`` is
    given, is left out and recorded there (name -> why).
    """
    pm = pluggy.PluginManager("im")
    pm.add_hookspecs(hookspecs)
    plugins = list(plugins)

    def fail(name: str, why: str) -> None:
        if broken is None:
            raise PluginError(f"plugin {name!r} cannot be loaded: {why}")
        broken[name] = why

    for spec in plugins:
        if spec.startswith("no:"):
            pm.set_blocked(spec[3:])
    for name, module in DEFAULT_PLUGINS:
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module), name)
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    if autoload:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                _register(pm, ep.load(), ep.name)
            except Exception as exc:  # an installed plugin's bug must not stop every im-run
                fail(ep.name, _why(exc))
    for spec in plugins:
        if not spec.startswith("no:"):
            try:
                load_plugin(pm, spec)
            except PluginError as exc:
                if broken is None:
                    raise
                broken[spec] = str(exc)
    for name, why in _unknown_hooks(pm):
        pm.unregister(name=name)
        fail(name, why)
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(log.info)
        pm.enable_tracing()
    return pm


def _why(exc: BaseException) -> str:
    if isinstance(exc, pluggy.PluginValidationError):
        return " ".join(str(exc).split())  # pluggy's lines, on one
    return f"{type(exc).__name__}: {exc}"


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register ``plugin`` as ``name``, last (asked first); one registered already
    moves there."""
    if pm.has_plugin(name):
        pm.unregister(name=name)
    pm.register(plugin, name)


def _unknown_hooks(pm: pluggy.PluginManager) -> list[tuple[str, str]]:
    """(plugin, why) for every plugin implementing a hook ``hookspecs`` lacks."""
    known = [n for n in dir(hookspecs) if n.startswith("im_")]
    found: dict[str, str] = {}
    for hook_name in dir(pm.hook):
        caller = getattr(pm.hook, hook_name)
        if hook_name.startswith("_") or not isinstance(caller, pluggy.HookCaller):
            continue
        if caller.spec is not None:
            continue
        close = difflib.get_close_matches(hook_name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        for impl in caller.get_hookimpls():
            found.setdefault(
                impl.plugin_name, f"implements {hook_name!r}, which is not an im hook{hint}"
            )
    return sorted(found.items())


def load_plugin(pm: pluggy.PluginManager, spec: str) -> None:
    """Register the plugin ``spec`` last (asked first): an optional built-in's name,
    an entry-point name of the group ``im``, or a dotted module path."""
    if pm.is_blocked(spec):
        return
    if spec in OPTIONAL_PLUGINS:
        try:
            module = importlib.import_module(OPTIONAL_PLUGINS[spec])
        except ImportError as exc:  # an optional dependency is not installed
            raise PluginError(f"cannot load plugin {spec!r}: {exc}") from exc
        _register(pm, module, spec)
        return
    if pm.has_plugin(spec):  # an entry point autoloaded it: named, it moves last
        _register(pm, pm.get_plugin(spec), spec)
        return
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            try:
                _register(pm, ep.load(), spec)
            except Exception as exc:
                raise PluginError(f"cannot load plugin {spec!r}: {_why(exc)}") from exc
            return
    try:
        module = importlib.import_module(spec)
    except ImportError as exc:
        raise PluginError(
            f"cannot load plugin {spec!r}: no entry point of that name in group "
            f"{ENTRY_POINT_GROUP!r} and no importable module ({exc})"
        ) from exc
    except Exception as exc:
        raise PluginError(f"cannot load plugin {spec!r}: {_why(exc)}") from exc
    try:
        _register(pm, module, spec)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"cannot load plugin {spec!r}: {_why(exc)}") from exc


def _culprit(caller: pluggy.HookCaller, exc: BaseException) -> str:
    """The plugin whose implementation of ``caller``'s hook raised ``exc`` (the
    innermost frame of one in the traceback)."""
    codes = {}
    for impl in caller.get_hookimpls():
        code = getattr(impl.function, "__code__", None)
        if code is not None:  # a plugin registered without a name is named by its id
            name = impl.plugin_name
            codes[code] = type(impl.plugin).__name__ if name.isdigit() else name
    name = "?"
    tb = exc.__traceback__
    while tb is not None:
        name = codes.get(tb.tb_frame.f_code, name)
        tb = tb.tb_next
    return name


def validate_order(pm: pluggy.PluginManager) -> list[str]:
    """The plugins implementing ``im_validate``, in the order they are asked."""
    return [impl.plugin_name for impl in reversed(pm.hook.im_validate.get_hookimpls())]


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

    def http_routes(self, add_get: Callable[[str, Any], None], server: Server) -> None:
        """GET routes for the HTTP port; the hook is synchronous (the app is being built)."""
        for result in self._hook.im_http_routes(add_get=add_get, server=server):
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError("im_http_routes must be a plain function, not async")

    def broker(self, server: Server) -> Broker | None:
        return self._hook.im_broker(server=server)  # type: ignore[no-any-return]

    async def _all(self, caller: Any, **kwargs: Any) -> list[Any]:
        return [await await_me_maybe(r) for r in caller(**kwargs)]

    async def startup(self, server: Server) -> None:
        """Every ``im_startup``; one that raises aborts the start with
        ``StartupFailed``, which names its plugin."""
        caller = self._hook.im_startup
        try:
            await self._all(caller, server=server)
        except Exception as exc:
            raise StartupFailed(_culprit(caller, exc), exc) from exc

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
