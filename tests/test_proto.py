"""The committed generated code describes exactly what ``proto/*.proto`` says.

Compared as descriptors, not as text: the text ``grpcio-tools`` writes changes
between its versions while the messages and services it describes do not.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted(p.stem for p in (ROOT / "proto").glob("*.proto"))


def _from_sources(tmp_path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "set.pb"
    code = protoc.main(
        [
            "protoc",
            "-Iim_plugins/pb=" + str(ROOT / "proto"),  # as proto/generate.py names them
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--descriptor_set_out={out}",
            *(f"im_plugins/pb/{name}.proto" for name in PROTOS),
        ]
    )
    assert code == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return {f.name: f for f in files}


def _normalized(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Without what only some generators keep: comments and derived JSON names."""
    file.ClearField("source_code_info")
    for extension in file.extension:
        extension.ClearField("json_name")
    messages = list(file.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            field.ClearField("json_name")
    return file


@pytest.mark.parametrize("name", PROTOS)
def test_generated_module_matches_its_proto(name: str, tmp_path: Path) -> None:
    expected = _from_sources(tmp_path)[f"im_plugins/pb/{name}.proto"]
    module = importlib.import_module(f"im_plugins.pb.{name}_pb2")
    committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    assert _normalized(committed) == _normalized(expected), (
        f"regenerate with: python proto/generate.py ({name})"
    )
    stub = ROOT / "im_plugins" / "pb" / f"{name}_pb2_grpc.py"
    assert stub.exists() == bool(expected.service), f"{stub.name}: stubs out of date"
    for service in expected.service:  # every method has its stub
        text = stub.read_text()
        for method in service.method:
            assert f"/{expected.package}.{service.name}/{method.name}" in text
