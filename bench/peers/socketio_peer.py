"""Peer: python-socketio on aiohttp, every client in one room, ``emit(room=...)``.

    python -m bench.peers.socketio_peer PORT

Clients speak Engine.IO 4 over a plain WebSocket (``/socket.io/?EIO=4&transport=
websocket&user=U``, then ``40``); messages are text events (``m``) so no binary
attachments. Unicast is ``emit(to=sid)``; ``/push_ack`` is ``call(to=sid)``, the
emit-with-callback ack, answered once the client's callback arrived.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs

import orjson
import socketio
import uvloop
from aiohttp import web

from . import data, reply, stream_lines

# Engine.IO pings would land in the byte counts: push them past any run.
sio = socketio.AsyncServer(
    async_mode="aiohttp", transports=["websocket"], ping_interval=3600, ping_timeout=3600
)
ROOM = "all"
members = 0
users: dict[str, str] = {}  # user -> sid


@sio.event
async def connect(sid: str, environ: dict) -> None:
    global members
    await sio.enter_room(sid, ROOM)
    user = parse_qs(environ.get("QUERY_STRING", "")).get("user", [""])[0]
    users[user] = sid
    members += 1


@sio.event
async def disconnect(sid: str, reason: object = None) -> None:
    global members
    members -= 1


async def stats(request: web.Request) -> web.Response:
    return reply({"connections": members})


async def broadcast(request: web.Request) -> web.Response:
    await sio.emit("m", data(orjson.loads(await request.read())).decode(), room=ROOM)
    return reply({"sid": 0, "queue_length": 0})


async def push_stream(request: web.Request) -> web.Response:
    n = 0
    for obj in await stream_lines(request):
        await sio.emit("m", data(obj).decode(), room=ROOM)
        n += 1
    return reply({"processed": n, "results": []})


async def push_user(request: web.Request) -> web.Response:
    obj = orjson.loads(await request.read())
    sid = users.get(obj["user"])
    if sid is None:
        return web.json_response({"error": "not online"}, status=404)
    await sio.emit("m", data(obj).decode(), to=sid)
    return reply({"sid": 0, "missing": []})


async def push_ack(request: web.Request) -> web.Response:
    obj = orjson.loads(await request.read())
    sid = users.get(obj["user"])
    if sid is None:
        return web.json_response({"error": "not online"}, status=404)
    await sio.call("m", data(obj).decode(), to=sid, timeout=5)
    return reply({"acked": True})


async def main(port: int) -> None:
    app = web.Application()
    sio.attach(app)
    app.router.add_get("/stats", stats)
    app.router.add_post("/broadcast", broadcast)
    app.router.add_post("/push_stream", push_stream)
    app.router.add_post("/push_user", push_user)
    app.router.add_post("/push_ack", push_ack)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
