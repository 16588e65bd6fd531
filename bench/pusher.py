"""Unicast pushes and their receivers, in a process of their own.

    python -m bench.pusher HTTP_PORT RPC_PORT RECEIVERS RATE SECONDS API

Opens ``RECEIVERS`` WebSocket clients (users ``q0``, ``q1``, ...), prints ``ready``,
then for ``SECONDS`` sends ``RATE`` pushes/s round-robin to them through the
original's gRPC API (``im.basic.Basic/SendMessage``, API ``grpc``) or the HTTP push
API (``POST /api/v1/push_user``, API ``http``), paced open-loop (a slow call
does not delay the next). Each payload carries its sequence number; receivers note
when it arrived. Prints one JSON line: per push, its send time (``time.perf_counter``,
comparable with the harness's clock), push -> client ms and the call's round trip ms.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time

from .loadgen import WsClient, source_addresses, upgrade_request

HOST = "127.0.0.1"


class Receiver(WsClient):
    def __init__(self, request: bytes, arrived: dict[int, float]) -> None:
        super().__init__(request)
        self.arrived = arrived

    def on_frame(self, opcode: int, payload: bytes) -> None:
        data = base64.b64decode(json.loads(payload)["msg"])  # the JSON codec's frames
        if data[:1] == b"u":
            self.arrived[int(data[1:])] = time.perf_counter()


async def main(
    port: int, rpc_port: int, receivers: int, rate: float, seconds: float, api: str
) -> None:
    import aiohttp
    import grpc

    from im_plugins.pb import basic_pb2 as pb
    from im_plugins.pb import basic_pb2_grpc

    loop = asyncio.get_running_loop()
    arrived: dict[int, float] = {}
    sources = source_addresses()
    clients = []
    for i in range(receivers):
        request = upgrade_request(HOST, port, f"/conn?token=q{i}")
        _, client = await loop.create_connection(
            lambda r=request: Receiver(r, arrived), HOST, port, local_addr=(next(sources), 0)
        )
        if not await client.upgraded:
            raise RuntimeError(f"receiver q{i}: {client.outcome}")
        clients.append(client)
    sent: dict[int, float] = {}
    rtt: dict[int, float] = {}
    url = f"http://{HOST}:{port}/api/v1/push_user"
    async with (
        grpc.aio.insecure_channel(f"{HOST}:{rpc_port}") as channel,
        aiohttp.ClientSession() as session,
    ):
        stub = basic_pb2_grpc.BasicStub(channel)
        await stub.Ping(pb.Empty())
        print("ready", flush=True)

        async def push(seq: int) -> None:
            user, data = f"q{seq % receivers}", b"u%d" % seq
            t0 = sent[seq] = time.perf_counter()
            if api == "grpc":
                await stub.SendMessage(pb.SendMessageReq(token=user, data=data))
            else:
                body = json.dumps({"user": user, "data_b64": base64.b64encode(data).decode()})
                async with session.post(url, data=body) as r:
                    await r.read()
            rtt[seq] = (time.perf_counter() - t0) * 1000

        tasks = []
        start = time.perf_counter()
        for seq in range(int(rate * seconds)):
            delay = start + seq / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(push(seq)))
        await asyncio.gather(*tasks)
        await asyncio.sleep(1.0)  # stragglers
    for client in clients:
        client.abort()
    rows = [
        (sent[s], (arrived[s] - sent[s]) * 1000 if s in arrived else None, rtt.get(s))
        for s in sorted(sent)
    ]
    print(json.dumps({"pushes": rows}), flush=True)


if __name__ == "__main__":
    import uvloop

    a = sys.argv[1:]
    uvloop.run(main(int(a[0]), int(a[1]), int(a[2]), float(a[3]), float(a[4]), a[5]))
