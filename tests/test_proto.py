"""The committed generated code is what ``python proto/generate.py`` produces."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_reproducible(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    copy = tmp_path / "repo"
    (copy / "im_plugins" / "pb").mkdir(parents=True)
    shutil.copytree(ROOT / "proto", copy / "proto")
    subprocess.run([sys.executable, "proto/generate.py"], cwd=copy, check=True)
    made = sorted(p.name for p in (copy / "im_plugins" / "pb").iterdir())
    committed = sorted(
        p.name
        for p in (ROOT / "im_plugins" / "pb").iterdir()
        if p.name != "__init__.py" and p.suffix in (".py", ".pyi")
    )
    assert made == committed
    for name in made:
        generated = (copy / "im_plugins" / "pb" / name).read_text()
        assert generated == (ROOT / "im_plugins" / "pb" / name).read_text(), name
