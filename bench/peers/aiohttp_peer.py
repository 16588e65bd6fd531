"""Peer: plain aiohttp, one ``await ws.send_bytes()`` per client per message.

    python -m bench.peers.aiohttp_peer PORT

Clients connect to ``/ws?user=U``; the harness pushes over the HTTP routes of
``bench.peers`` (a broadcast sends to every client in turn).
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import uvloop
from aiohttp import web

from . import data, reply, stream_lines

clients: set[web.WebSocketResponse] = set()
users: dict[str, web.WebSocketResponse] = {}


async def client(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    user = request.query.get("user", "")
    clients.add(ws)
    users[user] = ws
    try:
        async for _ in ws:
            pass
    finally:
        clients.discard(ws)
        if users.get(user) is ws:
            del users[user]
    return ws


async def send_all(payload: bytes) -> None:
    for c in list(clients):
        await c.send_bytes(payload)


async def stats(request: web.Request) -> web.Response:
    return reply({"connections": len(clients)})


async def broadcast(request: web.Request) -> web.Response:
    await send_all(data(orjson.loads(await request.read())))
    return reply({"sid": 0, "queue_length": 0})


async def push_stream(request: web.Request) -> web.Response:
    n = 0
    for obj in await stream_lines(request):
        await send_all(data(obj))
        n += 1
    return reply({"processed": n, "results": []})


async def push_user(request: web.Request) -> web.Response:
    obj = orjson.loads(await request.read())
    ws = users.get(obj["user"])
    if ws is None:
        return web.json_response({"error": "not online"}, status=404)
    await ws.send_bytes(data(obj))
    return reply({"sid": 0, "missing": []})


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/ws", client)
    app.router.add_get("/stats", stats)
    app.router.add_post("/broadcast", broadcast)
    app.router.add_post("/push_stream", push_stream)
    app.router.add_post("/push_user", push_user)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
