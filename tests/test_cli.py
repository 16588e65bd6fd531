"""im-run: options from flags, environment and TOML; errors; graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import pytest

from im_client import Client
from im_core import CloseCode
from im_core.cli import main

ENV = {**os.environ, "IM_DISABLE_PLUGIN_AUTOLOAD": "1"}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "im_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**ENV, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "option"),
    [
        (["--http-port", "abc"], {}, "--http-port"),
        (["--http-port", "70000"], {}, "--http-port"),
        (["--codec", "xml"], {}, "--codec"),
        (["--heartbeat-interval", "-1"], {}, "--heartbeat-interval"),
        ([], {"IM_BUCKET_NUMBER": "zero"}, "--bucket-number"),
        (["--codec", "protobuf"], {}, "--message-type"),
        (["--broker", "nope"], {}, "broker"),
        (["--plugin", "no_such_plugin_module"], {}, "no_such_plugin_module"),
    ],
)
def test_bad_option_exits_nonzero_with_one_line(args, env, option) -> None:
    done = run_cli(*args, "--http-port" if not args else "--rpc-port", "0", env=env)
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if "error" in line]
    assert len(lines) == 1, done.stderr
    assert option in lines[0] and "Traceback" not in done.stderr


def test_config_file_errors_name_the_option(tmp_path) -> None:
    bad = tmp_path / "im.toml"
    bad.write_text('client_buffer = "many"\n')
    done = run_cli("--config", str(bad))
    assert done.returncode == 2 and "--client-buffer" in done.stderr
    bad.write_text("no_such_option = 1\n")
    done = run_cli("--config", str(bad))
    assert done.returncode == 2 and "no_such_option" in done.stderr


def test_plugins_command_lists_plugins_and_hooks(capsys) -> None:
    assert main(["plugins", "--plugin", "no:token_auth"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^http\s+im_add_options, im_register_transports$", out, re.M)
    assert re.search(r"^json_codec\s+im_register_codecs$", out, re.M)
    assert re.search(r"^token_auth\s+\(blocked\)$", out, re.M)


async def start_node(*args: str, env: dict[str, str] | None = None):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "im_core.cli",
        "--host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--rpc-port",
        "0",
        *args,
        stderr=asyncio.subprocess.PIPE,
        env={**ENV, **(env or {})},
    )
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        assert line, "im-run exited before serving"
        found = re.search(r"http :(\d+)", line)
        if found:
            return proc, int(found.group(1)), line


async def test_sigterm_drains_gracefully() -> None:
    proc, port, _ = await start_node()
    try:
        client = Client(f"http://127.0.0.1:{port}/conn", "alice")
        await client.connect()
        await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert await client.wait_closed() == CloseCode.GOING_AWAY
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await client.close()
    finally:
        if proc.returncode is None:
            proc.kill()


async def test_options_from_env_and_toml(tmp_path) -> None:
    config = tmp_path / "im.toml"
    config.write_text('codec = "protobuf"\nmessage_type = "binary"\n')
    proc, port, line = await start_node(
        "--config", str(config), env={"IM_HEARTBEAT_INTERVAL": "30"}
    )
    try:
        assert "codec protobuf" in line
        async with Client(f"http://127.0.0.1:{port}/conn", "bob") as client:
            # The server default is protobuf: a json-asking client still works.
            assert client.connects == 1
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
