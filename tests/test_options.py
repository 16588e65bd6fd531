"""Each plugin owns its options: a typed class whose fields become flags, IM_*
variables and TOML keys; a codec plugin can be the server's default."""

from __future__ import annotations

import aiohttp
import pytest

from im_core import Options, Server
from im_core.server import ConfigError
from im_plugins.grpc.options import GrpcOptions
from im_plugins.http.options import HttpOptions

from .conftest import eventually, ws_url
from .plugins import lenpack
from .test_cli import run_cli


def test_transport_options_belong_to_their_plugins() -> None:
    options = Options.from_values(http_port=9000, rpc_local_port="9002", heartbeat_interval=3)
    assert options.of(HttpOptions).http_port == 9000
    assert options.of(GrpcOptions).rpc_local_port == 9002  # converted by its own field
    assert options.heartbeat_interval == 3.0
    assert not hasattr(options, "http_port")


def test_plugin_option_from_flag_environment_and_file(tmp_path) -> None:
    plugin = "tests.plugins.lenpack"
    done = run_cli("--plugin", plugin, "--help")
    assert "--lenpack-strict" in done.stdout and "refuse empty client frames" in done.stdout
    # booleans as people write them, from each source; a bad one is one clear line
    for args, env in (
        (["--lenpack-strict", "maybe"], {}),
        ([], {"IM_LENPACK_STRICT": "perhaps"}),
    ):
        bad = run_cli("--plugin", plugin, "--http-port", "0", "--rpc-port", "0", *args, env=env)
        assert bad.returncode == 2
        assert bad.stderr.strip().splitlines() == [
            "im-run: error: --lenpack-strict: expected true or false, got "
            + repr("maybe" if args else "perhaps")
        ]
    config = tmp_path / "im.toml"
    config.write_text("lenpack_strict = 'no'\nhttp_prot = 1\n")
    typo = run_cli("--plugin", plugin, "--config", str(config))
    assert typo.returncode == 2 and "unknown option 'http_prot'" in typo.stderr


def test_booleans_are_parsed_as_people_write_them() -> None:
    for text, value in (("false", False), ("No", False), ("0", False), ("yes", True), ("ON", True)):
        options = Options.from_values(lenpack_strict=text)
        assert options.of(lenpack.LenpackOptions).lenpack_strict is value


def test_options_that_do_nothing_are_gone() -> None:
    done = run_cli("--bucket-size=10")
    assert done.returncode == 2 and "unrecognized arguments: --bucket-size" in done.stderr


async def test_unknown_or_bad_plugin_option_fails_start(make_server) -> None:
    with pytest.raises(ConfigError, match="--http-prot: no plugin declares"):
        await make_server(http_prot=1)
    with pytest.raises(ConfigError, match="--max-fragments: max_fragments must be > 0"):
        await make_server(max_fragments=0)


async def test_a_codec_plugin_can_be_the_default(make_server) -> None:
    server: Server = await make_server(plugins=(lenpack,), codec="lenpack")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_url(server), params={"token": "bin"})
        await eventually(lambda: server.buckets.get("bin"))
        await server.push("bin", b"hello", ack=True)
        msg = await ws.receive(timeout=5)
        await ws.close()
    assert msg.type == aiohttp.WSMsgType.BINARY  # the codec is not text-safe
    sid, payload = lenpack.LenpackCodec().decode_push(msg.data)
    assert sid > 0 and payload == b"hello"


def test_cli_default_codec_from_a_plugin() -> None:
    done = run_cli(
        "--plugin",
        "tests.plugins.lenpack",
        "--codec",
        "nope",
        "--http-port",
        "0",
        "--rpc-port",
        "0",
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("im-run: error: --codec: unknown codec")
    assert "Traceback" not in done.stderr
