"""``im-ctl``: look at and act on a running im through its HTTP API.

    im-ctl [--url URL] [--api-key KEY] [--json] [--timeout S] COMMAND [ARGS]

Commands: ``stats``, ``online USER``, ``presence USER``, ``kick USER``,
``push USER TEXT``, ``broadcast TEXT``, ``tags``, ``nodes``. Output is aligned
text; ``--json`` prints the API's JSON answer instead (one document), also for
an error the server answered. The exit status says what happened (``Exit``);
an error is one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import math
import os
import ssl
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import yarl

from .api import Answer, Api, Unreachable

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = "10"
Document = dict[str, Any]


class Exit(enum.IntEnum):
    """The exit status of each outcome (docs/operations.md, "im-ctl")."""

    OK = 0
    #: A negative answer: the user is not online (online, presence, kick, push).
    NO = 1
    #: Bad arguments, or the server refused the request as invalid (400, 413).
    USAGE = 2
    #: The server refused the API key: missing or wrong (401, 403).
    REFUSED = 3
    #: No answer (connection refused, timeout), a failing or busy server (5xx, 429),
    #: or an answer that is not im's.
    UNAVAILABLE = 4


EXIT_HELP = """exit status:
  0  success
  1  negative answer: the user is not online (online, presence, kick, push)
  2  usage error, or the server refused the request as invalid (400, 413)
  3  missing or wrong API key (401, 403)
  4  server unreachable, timed out, failing (5xx), busy (429) or not im

environment: IM_URL (--url), IM_API_KEY (--api-key)"""


# --- what each command asks and shows ---------------------------------------------


@attrs.frozen
class Request:
    method: str
    route: str  # under /api/v1/
    query: dict[str, str] | None = None
    body: Document | None = None


Shown = tuple[Exit, list[str]]


@attrs.frozen
class Command:
    help: str
    request: Callable[[argparse.Namespace], Request]
    #: The exit status and human output of a 200 answer.
    show: Callable[[argparse.Namespace, Document], Shown]
    #: The command's own arguments: (names, ``add_argument`` keywords).
    args: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()
    #: Whether a 404 ``not_found`` means "the user is not online" (exit 1); for
    #: the other commands it is a server without the route (exit 4).
    about_user: bool = False


USER = (("user",), {"metavar": "USER", "help": "user id"})
TEXT = (("text",), {"metavar": "TEXT", "help": "payload, sent as its UTF-8 bytes"})


def _presence(args: argparse.Namespace) -> Request:
    return Request("GET", "presence", query={"user": args.user})


def _kick(args: argparse.Namespace) -> Request:
    body = {"user": args.user}
    if args.reason:
        body["reason"] = args.reason
    return Request("POST", "kick", body=body)


def _push(args: argparse.Namespace) -> Request:
    body: Document = {"user": args.user, "text": args.text}
    if args.store is not None:
        body["store"] = args.store
    return Request("POST", "push_user", body=body)


def show_stats(args: argparse.Namespace, doc: Document) -> Shown:
    width = max(map(len, doc), default=0)
    return Exit.OK, [f"{clean(k):<{width}}  {clean(str(v))}" for k, v in doc.items()]


def show_online(args: argparse.Namespace, doc: Document) -> Shown:
    user = clean(args.user)
    if not doc["online"]:
        return Exit.NO, [f"{user} is not online"]
    devices = doc.get("devices") or [doc]
    if len(devices) == 1:
        return Exit.OK, [f"{user} is online (node {devices[0]['node_id']})"]
    nodes = ", ".join(str(n) for n in sorted({d["node_id"] for d in devices}))
    return Exit.OK, [f"{user} is online ({len(devices)} connections, nodes {nodes})"]


def show_presence(args: argparse.Namespace, doc: Document) -> Shown:
    user = clean(args.user)
    if not doc["online"]:
        return Exit.NO, [f"{user} is not online"]
    rows = [
        (
            d.get("device") or "-",
            d["node_id"],
            d["conn_id"],
            when(d["connected_at"]),
            ",".join(d["tags"]) or "-",
        )
        for d in doc.get("devices") or [doc]
    ]
    header = ("DEVICE", "NODE", "CONNECTION", "CONNECTED (UTC)", "TAGS")
    return Exit.OK, [f"{user} is online", *table(header, rows)]


def show_push(args: argparse.Namespace, doc: Document) -> Shown:
    user = clean(args.user)
    if doc.get("stored"):
        return Exit.OK, [f"{user} is not online: kept for them (sid {doc['sid']})"]
    sid = f" (sid {doc['sid']})" if doc.get("sid") else ""
    return Exit.OK, [f"pushed to {user}{sid}"]


def show_tags(args: argparse.Namespace, doc: Document) -> Shown:
    tags = sorted(doc["tags"], key=lambda t: str(t["tag"]))
    if not tags:
        return Exit.OK, ["no tag groups"]
    rows = [(t["tag"], t["number"], when(t["created"])) for t in tags]
    return Exit.OK, table(("TAG", "USERS", "CREATED (UTC)"), rows)


def show_nodes(args: argparse.Namespace, doc: Document) -> Shown:
    rows = [(n["node_id"], n["users"], n["connections"]) for n in doc["nodes"]]
    return Exit.OK, table(("NODE", "USERS", "CONNECTIONS"), rows)


COMMANDS: dict[str, Command] = {
    "stats": Command(
        "the online count (cluster-wide) and the answering node's numbers",
        lambda args: Request("GET", "stats"),
        show_stats,
    ),
    "online": Command(
        "whether a user is online (exit status 1 when not)",
        _presence,
        show_online,
        (USER,),
        about_user=True,
    ),
    "presence": Command(
        "a user's connections: node, connection id, since when, tags",
        _presence,
        show_presence,
        (USER,),
        about_user=True,
    ),
    "kick": Command(
        "close a user's connections (close code 4502)",
        _kick,
        lambda args, doc: (Exit.OK, [f"kicked {clean(args.user)}"]),
        (USER, (("--reason",), {"default": "", "help": "sent to the client"})),
        about_user=True,
    ),
    "push": Command(
        "push TEXT to a user",
        _push,
        show_push,
        (
            USER,
            TEXT,
            (
                ("--store",),
                {
                    "action": argparse.BooleanOptionalAction,
                    "default": None,
                    "help": "keep it if the user is offline (default: the server's --store)",
                },
            ),
        ),
        about_user=True,
    ),
    "broadcast": Command(
        "push TEXT to everyone",
        lambda args: Request("POST", "broadcast", body={"text": args.text}),
        lambda args, doc: (
            Exit.OK,
            [f"queued for everyone (queue length {doc['queue_length']})"],
        ),
        (TEXT,),
    ),
    "tags": Command(
        "tag groups: users online with each tag (cluster-wide)",
        lambda args: Request("GET", "distribution"),
        show_tags,
    ),
    "nodes": Command(
        "the cluster's live nodes with their users and connections",
        lambda args: Request("GET", "nodes"),
        show_nodes,
    ),
}


# --- output ---------------------------------------------------------------------------


def clean(text: str) -> str:
    """``text`` safe to print on a terminal: a user id or tag with control
    characters (escape sequences) is shown escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    cells = [list(header), *([clean(str(c)) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


@attrs.frozen
class Result:
    status: Exit
    out: list[str] = attrs.field(factory=list)  # lines for stdout
    error: str | None = None  # the one line for stderr


def outcome(args: argparse.Namespace, command: Command, answer: Answer) -> Result:
    """What to print of ``answer``, and the exit status."""
    doc = answer.document
    out = [json.dumps(doc)] if args.json and doc is not None else []
    if answer.status == 200 and doc is not None:
        try:
            status, lines = command.show(args, doc)
        except (LookupError, TypeError, ValueError, AttributeError, OverflowError, OSError):
            broken = f"{args.url}: the answer is not the one im gives"
            return Result(Exit.UNAVAILABLE, out, broken)
        return Result(status, out if args.json else lines)
    error = doc.get("error") if doc is not None else None
    if isinstance(error, dict):
        code = str(error.get("code", ""))
        message = f"{answer.status} {code}: {error.get('message', '')}"
    else:  # not an im error: a proxy's, another server's
        code = ""
        message = f"{args.url}: {answer.status} {answer.reason} (not an answer of im's API)"
    if answer.status == 404 and command.about_user and code == "not_found":
        return Result(Exit.NO, out, message)
    if answer.status in (400, 413):
        return Result(Exit.USAGE, out, message)
    if answer.status in (401, 403):
        return Result(Exit.REFUSED, out, message)
    return Result(Exit.UNAVAILABLE, out, message)


class UsageError(Exception):
    """An option the command cannot use (exit status 2)."""


def run(args: argparse.Namespace) -> Result:
    command = COMMANDS[args.command]
    request = command.request(args)
    try:
        api = Api(args.url, args.api_key, args.timeout, tls_context(args))
    except UsageError as exc:
        return Result(Exit.USAGE, error=str(exc))
    try:
        answer = asyncio.run(
            api.call(request.method, request.route, query=request.query, body=request.body)
        )
    except Unreachable as exc:
        return Result(Exit.UNAVAILABLE, error=f"cannot reach {exc}")
    return outcome(args, command, answer)


# --- arguments --------------------------------------------------------------------------


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The context for https when ``--cacert`` or ``--cert`` is given (else the
    system's trust). A file that cannot be used is a usage error."""
    cacert, cert, key = args.cacert, args.cert, args.key
    if cacert is None and cert is None:
        return None
    try:
        context = ssl.create_default_context(cafile=cacert)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--cacert/--cert/--key: {exc}") from None
    return context


def base_url(text: str) -> str:
    url = yarl.URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(
            f"expected http://HOST:PORT or https://HOST:PORT, got {text!r}"
        )
    return text


def api_key(text: str) -> str:
    if any(c < " " or c == "\x7f" for c in text):
        raise argparse.ArgumentTypeError("the key contains control characters")
    return text


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes, before or after its name. Only the main
    parser has defaults: a command's parser would overwrite a value given before
    the command name with its own default."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--url",
        type=base_url,
        default=default(os.environ.get("IM_URL") or DEFAULT_URL),
        help=f"the server's HTTP address (env IM_URL; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        type=api_key,
        metavar="KEY",
        default=default(os.environ.get("IM_API_KEY") or None),
        help="the server's --api-key (env IM_API_KEY, which keeps it out of the process list)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print the API's JSON answer"
    )
    parser.add_argument(
        "--cacert",
        metavar="FILE",
        default=default(os.environ.get("IM_CACERT") or None),
        help="CA certificate(s) to trust for https:// (env IM_CACERT; default: the system's)",
    )
    parser.add_argument(
        "--cert",
        metavar="FILE",
        default=default(None),
        help="client certificate (PEM) for a server with --tls-client-ca",
    )
    parser.add_argument(
        "--key",
        metavar="FILE",
        default=default(None),
        help="the client certificate's private key, if not in --cert",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        default=default(DEFAULT_TIMEOUT),
        help=f"seconds for the whole call (default {DEFAULT_TIMEOUT})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="im-ctl",
        description="Look at and act on a running im through its HTTP API.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, parents=[common], help=command.help)
        sub.description = command.help
        for names, keywords in command.args:
            sub.add_argument(*names, **keywords)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits with status 2 on a usage error
    try:
        result = run(args)
    except KeyboardInterrupt:
        return 130
    try:
        if result.out:
            print("\n".join(result.out), flush=True)
    except BrokenPipeError:  # the reader went away (| head): no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if result.error is not None:
        print(f"im-ctl: {clean(result.error)}", file=sys.stderr)
    return result.status


if __name__ == "__main__":
    sys.exit(main())
