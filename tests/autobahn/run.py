"""Run Autobahn|Testsuite's fuzzing client against im serving the echo example.

    python -m tests.autobahn.run [--cases 1.* 2.*] [--outdir DIR] [--timeout 1200]

Installs the Python 2.7 testsuite if needed (``env.py``), starts ``im-run`` with
``examples.echo.echo_plugin`` on free ports, runs ``wstest -m fuzzingclient``, prints
a per-section summary and every case that did not pass, and exits 1 if any case
failed (``behavior`` or ``behaviorClose``), 2 if the run itself broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from . import env, report

AGENT = "im"
# Sections 12 and 13 need permessage-deflate, which im does not offer.
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
EXCLUDE = ["12.*", "13.*"]
# Section 9 sends 16 MiB messages and 4 MiB ones in 64-byte fragments, and echoes
# of those wait in the socket's buffer: lift every per-connection limit above that.
SERVER_FLAGS = [
    "--max-frame-size", "20000000",
    "--max-fragments", "1000000",
    "--max-inbound-rate", "0",
    "--max-message-size", "20000000",
    "--client-buffer-bytes", "100000000",
    "--log-level", "WARNING",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"im-run exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"im-run did not listen on port {port} within {timeout:.0f}s")


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def im_server(workdir: pathlib.Path) -> Iterator[int]:
    """Start im with the echo plugin; yield its WebSocket port."""
    http_port, rpc_port = free_port(), free_port()
    # The subprocess imports this checkout (and the example) first.
    path = os.pathsep.join(filter(None, [str(env.ROOT), os.environ.get("PYTHONPATH")]))
    child_env = {**os.environ, "PYTHONPATH": path, "IM_DISABLE_PLUGIN_AUTOLOAD": "1"}
    cmd = [sys.executable, "-m", "im_core.cli", "--plugin", "examples.echo.echo_plugin"]
    cmd += ["--host", "127.0.0.1", "--http-port", str(http_port), "--rpc-port", str(rpc_port)]
    log = workdir / "im.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, *SERVER_FLAGS], env=child_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_port(http_port, proc)
        yield http_port
    finally:
        stop(proc)
        if proc.returncode not in (0, -signal.SIGTERM):
            print(f"im-run exited with {proc.returncode}; its log:", file=sys.stderr)
            print(log.read_text(errors="replace")[-4000:], file=sys.stderr)


def run_wstest(wstest: list[str], spec: pathlib.Path, log: pathlib.Path, timeout: float) -> None:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*wstest, "-m", "fuzzingclient", "-s", str(spec)], cwd=spec.parent,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop(proc, grace=2.0)
            raise RuntimeError(f"wstest did not finish within {timeout:.0f}s") from None
    if code:
        raise RuntimeError(f"wstest exited with {code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=CASES, help="case patterns to run")
    parser.add_argument("--outdir", type=pathlib.Path, help="keep logs and reports here")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds for wstest")
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        wstest = env.ensure_env()
    except env.EnvError as exc:
        print(f"autobahn: {exc}", file=sys.stderr)
        return 2
    installed = time.monotonic()

    with contextlib.ExitStack() as stack:
        if args.outdir:
            workdir = args.outdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory("-autobahn")))
        outdir, wstest_log = workdir / "reports", workdir / "wstest.log"
        try:
            port = stack.enter_context(im_server(workdir))
            spec = workdir / "fuzzingclient.json"
            spec.write_text(
                json.dumps(
                    {
                        "outdir": str(outdir),
                        "servers": [
                            {"agent": AGENT, "url": f"ws://127.0.0.1:{port}/conn?codec=raw"}
                        ],
                        "cases": args.cases,
                        "exclude-cases": EXCLUDE,
                        "exclude-agent-cases": {},
                    },
                    indent=2,
                )
            )
            run_wstest(wstest, spec, wstest_log, args.timeout)
            results = report.load(outdir, AGENT)
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            print(f"autobahn: {exc}", file=sys.stderr)
            if wstest_log.exists():
                print(wstest_log.read_text(errors="replace")[-4000:], file=sys.stderr)
            return 2

    failed = report.failure_lines(results)
    print(report.summary_table(results))
    if other := report.other_results(results):
        print(f"other: {other}")
    print(
        f"\n{len(results)} cases in {time.monotonic() - installed:.0f}s "
        f"(testsuite env ready in {installed - started:.1f}s)"
    )
    if args.outdir:
        print(f"reports: {outdir / 'index.html'}")
    if failed:
        print(f"\ncases that did not pass ({sum(not r.passed for r in results)}):")
        print("\n".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
