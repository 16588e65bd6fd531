"""Peer: plain aiohttp, one ``await ws.send_bytes()`` per client per message.

    python -m bench.peers.aiohttp_peer PORT

Clients connect to ``/ws``; the control client to ``/control``.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import WSMsgType, web

from bench.trigger_plugin import payload

clients: set[web.WebSocketResponse] = set()


async def client(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    clients.add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        clients.discard(ws)
    return ws


async def control(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT:
            continue
        cmd, *args = msg.data.split()
        if cmd == "count":
            await ws.send_str(f"#count {len(clients)}")
        elif cmd == "burst":
            m, size = int(args[0]), int(args[1])
            await ws.send_str(f"#queued {m}")
            for i in range(m):
                data = payload(i, size)
                for c in list(clients):
                    await c.send_bytes(data)
    return ws


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/ws", client)
    app.router.add_get("/control", control)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
