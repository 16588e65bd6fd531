"""The chat example works end to end over real sockets."""

from __future__ import annotations

import json

from im_core import Server

from .conftest import eventually


async def test_chat_room(make_server, connect) -> None:
    server: Server = await make_server(names=("examples.chat.chat_plugin",))
    alice = await connect(server, "alice", tags=("lobby",))
    bob = await connect(server, "bob", tags=("lobby",))
    carl = await connect(server, "carl", tags=("other",))
    await eventually(lambda: server.local.local_count() == 3)
    await alice.send(json.dumps({"room": "lobby", "text": "hi"}).encode())
    want = {"from": "alice", "room": "lobby", "text": "hi"}
    for client in (alice, bob):
        while (got := json.loads((await client.receive()).data)).get("joined"):
            pass
        assert got == want
    await carl.send(b"not json")
    while (got := json.loads((await carl.receive()).data)).get("joined"):
        pass
    assert "error" in got
