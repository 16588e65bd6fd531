"""A Python 2.7 environment holding Autobahn|Testsuite (it never moved to Python 3).

The pinned packages are installed with ``pip install --target`` into one folder
(``.venv-autobahn/`` at the repository root) rather than a virtualenv: Python 2.7's
own pip can do that without bootstrapping anything. The folder is put first on
``sys.path`` through ``site.addsitedir`` so its ``.pth`` files (namespace packages
such as ``zope``) work. A stamp of the requirements and the interpreter makes a
second call a no-op.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIREMENTS = HERE / "requirements-py27.txt"
DEFAULT_DIR = ROOT / ".venv-autobahn"
PYTHON_ENV = "AUTOBAHN_PYTHON"  # an explicit interpreter wins over the search
STAMP = ".installed"

# Runs wstest from the target folder; the folder is argv[1], wstest's args follow.
_LAUNCH = (
    "import site, sys; t = sys.argv.pop(1); site.addsitedir(t); "
    "sys.path.remove(t); sys.path.insert(0, t); sys.argv[0] = 'wstest'; "
    "from autobahntestsuite.wstest import run; run()"
)


class EnvError(RuntimeError):
    """No Python 2.7, or the install failed."""


def _real_py27(python: str) -> str | None:
    """The interpreter behind ``python`` if it is a 2.7 (a pyenv shim resolves to
    the build it runs), else None."""
    probe = (
        "import sys; print('%d.%d %s' % (sys.version_info[0], sys.version_info[1], sys.executable))"
    )
    try:
        out = subprocess.run(
            [python, "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYENV_VERSION": os.environ.get("PYENV_VERSION", "2.7.18")},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    version, _, executable = out.stdout.strip().partition(" ")
    return executable if out.returncode == 0 and version == "2.7" and executable else None


def _pyenv_roots() -> list[str]:
    roots = []
    if pyenv := shutil.which("pyenv"):
        out = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            roots.append(out.stdout.strip())
    roots += [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    return [r for r in roots if r]


def find_python27() -> str:
    """An interpreter path: $AUTOBAHN_PYTHON, a pyenv 2.7 build, or python2.7 on PATH
    (pyenv's shim answers only when a 2.7 version is selected, hence the checks)."""
    candidates = [os.environ.get(PYTHON_ENV, "")]
    for root in _pyenv_roots():
        candidates += sorted(glob.glob(f"{root}/versions/2.7*/bin/python2.7"), reverse=True)
    candidates.append(shutil.which("python2.7") or "")
    for python in filter(None, candidates):
        if real := _real_py27(python):
            return real
    raise EnvError(f"no Python 2.7 found (set {PYTHON_ENV}, or install 2.7 with pyenv)")


def _stamp(python: str) -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(os.path.realpath(python).encode())
    return digest.hexdigest()


def ensure_env(target: pathlib.Path = DEFAULT_DIR, *, quiet: bool = True) -> list[str]:
    """Install the pinned testsuite into ``target`` unless it is already there;
    return the command prefix that runs ``wstest``."""
    python = find_python27()
    stamp = _stamp(python)
    stamp_file = target / STAMP
    if not (stamp_file.exists() and stamp_file.read_text() == stamp):
        # Install beside the target and swap it in, so a failed run leaves no half env.
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [python, "-m", "pip", "install", "--no-deps", "--no-warn-script-location"]
        cmd += ["--target", str(tmp), "-r", str(REQUIREMENTS)]
        env = {**os.environ, "PIP_NO_PYTHON_VERSION_WARNING": "1"}
        # Python 2.7's pip warns a lot (its end of life, index settings meant for
        # newer pips): show its output only when it fails, unless asked.
        print(f"installing Autobahn|Testsuite for Python 2.7 into {target}", flush=True)
        pip = subprocess.run(cmd, env=env, capture_output=quiet, text=True, check=False)
        if pip.returncode:
            raise EnvError(f"pip install -r {REQUIREMENTS.name} failed:\n{pip.stdout}{pip.stderr}")
        check = [python, "-s", "-c", _LAUNCH.replace("run()", "pass"), str(tmp)]
        out = subprocess.run(check, capture_output=True, text=True, check=False)
        if out.returncode:
            raise EnvError(f"the testsuite was installed but does not import:\n{out.stderr}")
        (tmp / STAMP).write_text(stamp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return [python, "-s", "-c", _LAUNCH, str(target)]


if __name__ == "__main__":
    try:
        print(" ".join(ensure_env(quiet=False)[:1]), "with the testsuite in", DEFAULT_DIR)
    except EnvError as exc:
        sys.exit(f"autobahn env: {exc}")
