"""``im-run``: start a node, or ``im-run plugins`` to list plugins and their hooks.

Every option is a flag (``--http-port``), an environment variable (``IM_HTTP_PORT``)
and a key of the TOML file given with ``--config`` (``http_port = 8080``);
precedence: flag > environment > file > default. Plugins add their own options
through ``im_add_options``. ``--plugin`` (repeatable; also ``IM_PLUGINS``, comma
separated) loads a plugin by entry-point name or dotted module path;
``--plugin no:NAME`` blocks one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

import attrs

from .options import HELP, Options
from .plugins import Hooks, PluginError, get_plugin_manager, plugin_table
from .server import ConfigError, Server

log = logging.getLogger("im")
_SKIP = {"plugins", "plugin"}


class UsageError(Exception):
    """A bad option value: printed as one line, exit status 2."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plugin_options(pm: Any) -> dict[str, dict[str, Any]]:
    declared: dict[str, dict[str, Any]] = {}

    def add(name: str, default: Any, help: str, type: Any = str, choices: Any = None) -> None:
        declared[name] = {"default": default, "help": help, "type": type, "choices": choices}

    Hooks(pm).add_options(add)
    return declared


def _help(text: str, default: Any) -> str:
    if default is None or "default" in text:
        return text
    return f"{text} (default: {default})"


def build_parser(plugin_opts: dict[str, dict[str, Any]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="im-run", description="im: a real-time push server (WebSocket + gRPC + HTTP)."
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
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    for field in attrs.fields(Options):
        if field.name in _SKIP:
            continue
        parser.add_argument(
            _flag(field.name),
            dest=field.name,
            default=None,
            metavar=field.name.upper(),
            help=_help(HELP.get(field.name, ""), field.default),
        )
    for name, spec in plugin_opts.items():
        parser.add_argument(
            _flag(name),
            dest=f"plugin:{name}",
            default=None,
            choices=spec["choices"],
            metavar=name.upper(),
            help=_help(spec["help"], spec["default"]),
        )
    return parser


def _convert(option: str, value: Any, kind: Any) -> Any:
    if value is None or not callable(kind) or isinstance(value, kind):
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"{_flag(option)}: invalid value {value!r}") from None


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
    args: argparse.Namespace, plugins: Sequence[str], plugin_opts: dict[str, dict[str, Any]]
) -> Options:
    """Merge flags, environment, config file and defaults into validated Options."""
    config = _load_config(args.config or os.environ.get("IM_CONFIG"))
    known = {f.name for f in attrs.fields(Options)} | set(plugin_opts)
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
    for field in attrs.fields(Options):
        if field.name in _SKIP:
            continue
        value = pick(field.name, getattr(args, field.name))
        if value is not None:
            values[field.name] = value
    extra: dict[str, Any] = {}
    for name, spec in plugin_opts.items():
        value = pick(name, getattr(args, f"plugin:{name}"))
        value = spec["default"] if value is None else _convert(name, value, spec["type"])
        if spec["choices"] and value not in spec["choices"]:
            raise UsageError(f"{_flag(name)}: must be one of {list(spec['choices'])}")
        extra[name] = value
    fields = attrs.fields_dict(Options)
    for name, value in values.items():  # check one by one so errors name the option
        field = fields[name]
        try:
            if field.converter is not None:
                value = values[name] = field.converter(value)  # type: ignore[operator]
            if field.validator is not None:
                field.validator(None, field, value)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{_flag(name)}: {exc}") from None
    try:
        return Options(**values, plugins=tuple(plugins), plugin=extra)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--{str(exc).split(':')[0].replace('_', '-')}: {exc}") from None


def _plugins_from(argv: Sequence[str]) -> list[str]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    known, _ = pre.parse_known_args(list(argv))
    env = [p.strip() for p in os.environ.get("IM_PLUGINS", "").split(",") if p.strip()]
    named: list[str] = known.plugin
    return env + named


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = _plugins_from(argv)
    try:
        pm = get_plugin_manager(plugins)
        plugin_opts = _plugin_options(pm)
        args = build_parser(plugin_opts).parse_args(argv)
        options = resolve_options(args, plugins, plugin_opts)
    except (PluginError, UsageError) as exc:
        print(f"im-run: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "plugins":
        for name, hooks in plugin_table(pm):
            print(f"{name:<20} {', '.join(hooks) or '-'}")
        return 0
    level = (args.log_level or os.environ.get("IM_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(serve(Server(options, pm)))
    except ConfigError as exc:
        print(f"im-run: error: {exc}", file=sys.stderr)
        return 2


async def serve(server: Server) -> int:
    """Run until SIGTERM/SIGINT, then drain gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await server.stop()
        return 1
    ports = ", ".join(f"{t.name} :{getattr(t, 'port', '?')}" for t in server.transports)
    log.info(
        "im node %s serving (%s), broker %s, codec %s",
        server.node_id,
        ports,
        server.options.broker,
        server.options.codec,
    )
    await stop.wait()
    log.info("shutting down: closing %d connections", server.local_count())
    await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
