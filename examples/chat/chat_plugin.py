"""A chat room in one plugin: what a user sends goes to everyone in its rooms.

Run from the project root:

    im-run --plugin examples.chat.chat_plugin
    python examples/chat/chat_client.py alice lobby     # in two terminals
    python examples/chat/chat_client.py bob lobby

Clients join rooms with ``&tags=lobby,dev`` (read by the development token_auth) and
send JSON ``{"room": "lobby", "text": "hi"}``; the plugin pushes
``{"from": ..., "room": ..., "text": ...}`` to the room's tag group.
"""

from __future__ import annotations

import json

from im_core import hookimpl
from im_core.errors import ImError


@hookimpl
async def im_receive(server, conn, data: bytes) -> None:
    try:
        message = json.loads(data)
        room, text = str(message["room"]), str(message["text"])
    except (ValueError, KeyError, TypeError):
        await server.push(conn.user_id, b'{"error": "send {\\"room\\": ..., \\"text\\": ...}"}')
        return
    if room not in conn.tags:
        await server.push(conn.user_id, json.dumps({"error": f"not in room {room}"}).encode())
        return
    out = json.dumps({"from": conn.user_id, "room": room, "text": text}).encode()
    try:
        server.push_tags([room], out)
    except ImError as exc:  # busy or too large: tell the sender, drop nothing silently
        await server.push(conn.user_id, json.dumps({"error": str(exc)}).encode())


@hookimpl
async def im_connected(server, conn) -> None:
    for room in conn.tags:
        server.push_tags([room], json.dumps({"joined": conn.user_id, "room": room}).encode())
