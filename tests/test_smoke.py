from im_core import Server

from .conftest import eventually


async def test_push_reaches_client(server: Server, connect) -> None:
    client = await connect(server, "alice")
    await eventually(lambda: server.local_count() == 1)
    result = await server.push("alice", b"hello")
    assert result.missing == ()
    msg = await client.receive()
    assert msg.data == b"hello" and msg.sid == 0
