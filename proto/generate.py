"""Regenerate the Python code for every .proto in this folder.

    python proto/generate.py

Output goes to ``im_plugins/pb/`` (committed, so installs need no grpcio-tools).
"""

from __future__ import annotations

import os
import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = "im_plugins/pb"


def main() -> int:
    protos = sorted(p.name for p in (ROOT / "proto").glob("*.proto"))
    args = [
        "protoc",
        f"-I{OUT}=proto",  # generated imports read "from im_plugins.pb import ..."
        f"-I{pathlib.Path(protoc.__file__).parent / '_proto'}",
        "--python_out=.",
        "--pyi_out=.",
        "--grpc_python_out=.",
        *(f"{OUT}/{name}" for name in protos),
    ]
    os.chdir(ROOT)
    code = protoc.main(args)
    if code == 0:
        for stub in (ROOT / OUT).glob("*_pb2_grpc.py"):
            source = ROOT / "proto" / stub.name.replace("_pb2_grpc.py", ".proto")
            if "rpc " not in source.read_text():
                stub.unlink()  # message-only protos need no gRPC stub module
    return code


if __name__ == "__main__":
    sys.exit(main())
