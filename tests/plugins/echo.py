"""A plugin module loaded by dotted path in the tests: echoes data back as a push."""

from im_core import hookimpl


@hookimpl
async def im_receive(server, conn, data: bytes) -> None:
    await server.push(conn.user_id, b"echo:" + data)
