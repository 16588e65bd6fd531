"""Peer: python-socketio on aiohttp, every client in one room, ``emit(room=...)``.

    python -m bench.peers.socketio_peer PORT

Clients speak Engine.IO 4 over a plain WebSocket (``/socket.io/?EIO=4&transport=
websocket``, then ``40``); messages are text events so no binary attachments.
"""

from __future__ import annotations

import asyncio
import sys

import socketio
import uvloop
from aiohttp import WSMsgType, web

from bench.trigger_plugin import payload

# Engine.IO pings would land in the byte counts: push them past any run.
sio = socketio.AsyncServer(
    async_mode="aiohttp", transports=["websocket"], ping_interval=3600, ping_timeout=3600
)
ROOM = "all"
members = 0


@sio.event
async def connect(sid: str, environ: dict) -> None:
    global members
    await sio.enter_room(sid, ROOM)
    members += 1


@sio.event
async def disconnect(sid: str, reason: object = None) -> None:
    global members
    members -= 1


async def control(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT:
            continue
        cmd, *args = msg.data.split()
        if cmd == "count":
            await ws.send_str(f"#count {members}")
        elif cmd == "burst":
            m, size = int(args[0]), int(args[1])
            await ws.send_str(f"#queued {m}")
            for i in range(m):
                await sio.emit("m", payload(i, size).decode(), room=ROOM)
    return ws


async def main(port: int) -> None:
    app = web.Application()
    sio.attach(app)
    app.router.add_get("/control", control)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
