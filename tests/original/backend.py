"""An original backend: a plain (synchronous) gRPC client generated from
``basic.proto`` beside this file and nothing of im. Run in its own process, so
its ``im.basic`` descriptors never meet im's own.

    python backend.py HOST:PORT [API_KEY]

Prints one JSON line per call: {"call", "ok", "reply" | "code", "details", "trailing"}.
"""

from __future__ import annotations

import json
import sys

import basic_pb2 as pb  # generated from tests/original/basic.proto
import basic_pb2_grpc
import grpc


def main(target: str, key: str | None = None) -> None:
    metadata = (("x-api-key", key),) if key else None
    with grpc.insecure_channel(target) as channel:
        stub = basic_pb2_grpc.BasicStub(channel)
        calls = [
            ("Ping", pb.Empty()),
            ("Onliens", pb.Empty()),
            ("SendMessage", pb.SendMessageReq(token="alice", data=b"to alice")),
            ("SendMessage", pb.SendMessageReq(token="ghost", data=b"to ghost")),
            (
                "SendMessageToMultiple",
                pb.SendMessageToMultipleReq(token=["alice", "bob", "ghost"], data=b"to many"),
            ),
            ("Broadcast", pb.BroadcastReq(data=b"to all")),
            ("WTIBroadcast", pb.BroadcastByWTIReq(data={"v1": b"v1 content", "v2": b"v2 content"})),
            ("WTIDistribute", pb.Empty()),
        ]
        for name, request in calls:
            out: dict = {"call": name}
            try:
                reply, call = getattr(stub, name).with_call(request, metadata=metadata)
            except grpc.RpcError as exc:
                out.update(ok=False, code=exc.code().name, details=exc.details())
            else:
                out.update(ok=True, reply=_dict(reply))
                out["trailing"] = [
                    [k, v.decode() if isinstance(v, bytes) else v]
                    for k, v in call.trailing_metadata()
                ]
            print(json.dumps(out), flush=True)


def _dict(reply) -> dict:
    if isinstance(reply, pb.WTIDistributeReply):
        return {
            tag: {"tag": d.tag, "number": d.number, "createTime": d.createTime}
            for tag, d in reply.data.items()
        }
    return {f.name: getattr(reply, f.name) for f in reply.DESCRIPTOR.fields}


if __name__ == "__main__":
    main(*sys.argv[1:])
