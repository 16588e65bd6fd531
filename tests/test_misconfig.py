"""Every misconfiguration is one line on stderr and exit status 2, before anything
listens; a broken installed plugin is named and does not break --help or
`im-run plugins`; plugins start before the node listens and may refuse to."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import aiohttp
import pytest

from im_client import Client, ConnectError
from im_core import hookimpl
from im_core.cli import main
from im_core.plugins import get_plugin_manager, validate_order

from .conftest import ws_url
from .test_cli import ENV, run_cli


def one_error(done, *words: str) -> str:
    """The single error line of a run that exited 2 before listening."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "serving" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--log-level", "LOUD"], ("--log-level", "LOUD", "INFO")),
        (["--log-format", "xml"], ("--log-format", "json")),
        (["--broker", "redis", "--redis-url", "nope"], ("--redis-url", "redis://")),
        (["--broker", "nats", "--nats-url", "http://x"], ("--nats-url", "nats://")),
        (["--codec", "xml"], ("--codec", "xml")),
        (["--plugin", "tests.plugins.misspelled"], ("im_valdate", "did you mean 'im_validate'")),
        (["--plugin", "tests.plugins.bad_argument"], ("tests.plugins.bad_argument", "session")),
        (
            ["--plugin", "tests.plugins.failing_startup"],
            ("plugin 'tests.plugins.failing_startup' failed to start", "user database"),
        ),
    ],
)
def test_a_misconfiguration_is_one_line_and_status_2(args: list[str], words: tuple[str]) -> None:
    one_error(run_cli(*args, "--http-port", "0", "--rpc-port", "0"), *words)


def test_myauth_without_a_secret_refuses_to_start() -> None:
    pytest.importorskip("myauth")
    env = {k: v for k, v in ENV.items() if k not in ("MYAUTH_SECRET", "IM_MYAUTH_SECRET")}
    done = run_cli("--plugin", "myauth", "--http-port", "0", "--rpc-port", "0", env=env)
    one_error(done, "plugin 'myauth'", "MYAUTH_SECRET")


def broken_dist(root: Path, name: str, target: str) -> Path:
    """An installed distribution (dist-info only) whose ``im`` entry point is ``target``."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[im]\n{name} = {target}\n")
    return root


def test_a_broken_installed_plugin_is_named_and_help_and_plugins_still_work(
    tmp_path: Path,
) -> None:
    site = broken_dist(tmp_path, "brokenplug", "no_such_module_for_im")
    env = {"IM_DISABLE_PLUGIN_AUTOLOAD": "", "MYAUTH_SECRET": "s"}  # autoload, as installed
    env["PYTHONPATH"] = os.pathsep.join([str(site), os.getcwd()])

    helped = run_cli("--help", env=env)
    assert helped.returncode == 0 and "brokenplug" in helped.stdout, helped.stderr
    listed = run_cli("plugins", env=env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^brokenplug\s+\(broken: .*no_such_module_for_im", listed.stdout, re.M)
    one_error(run_cli("--http-port", "0", "--rpc-port", "0", env=env), "brokenplug")


def test_the_last_plugin_named_decides_first(tmp_path: Path, monkeypatch, capsys) -> None:
    # Two plugins answering im_validate, both installed: the one named last with
    # --plugin is asked first, whatever the order they were installed in.
    monkeypatch.syspath_prepend(str(broken_dist(tmp_path, "deny_all", "tests.plugins.deny_all")))
    monkeypatch.delenv("IM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pm = get_plugin_manager(["deny_all", "tests.plugins.echo"])
    assert validate_order(pm)[0] == "deny_all"
    pm = get_plugin_manager(["no:deny_all"])
    assert "deny_all" not in validate_order(pm)
    assert main(["plugins", "--plugin", "deny_all", "--plugin", "no:myauth"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^im_validate is asked in this order: deny_all, token_auth$", out, re.M)


def test_an_unknown_variable_is_a_warning_with_the_closest_name() -> None:
    # A broker nobody provides stops the node after the warning, before it listens.
    done = run_cli("--broker", "nope", env={"IM_HEARTBEAT_INTERVALL": "5"})
    assert done.returncode == 2
    assert (
        "unknown variable IM_HEARTBEAT_INTERVALL ignored (did you mean IM_HEARTBEAT_INTERVAL?)"
        in done.stderr
    )


async def test_validate_returning_a_wrong_type_is_a_logged_500(
    make_server, caplog: pytest.LogCaptureFixture
) -> None:
    class Buggy:
        @hookimpl
        def im_validate(self, request) -> str:
            return request.token  # a user id, where an Identity belongs

    server = await make_server(plugins=(Buggy(),))
    with caplog.at_level(logging.ERROR, logger="im.server"):
        with pytest.raises(ConnectError) as info:
            await Client(ws_url(server), "ann").connect()
    assert (info.value.status, info.value.reason) == (500, "internal error")
    assert "plugin bug: im_validate returned str" in caplog.text
    async with aiohttp.ClientSession() as http:  # the node goes on serving
        async with http.get(ws_url(server).replace("/conn", "/health")) as resp:
            assert resp.status == 200
