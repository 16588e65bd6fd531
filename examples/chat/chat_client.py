"""Terminal chat client: python examples/chat/chat_client.py USER ROOM [URL]."""

from __future__ import annotations

import asyncio
import json
import sys

from im_client import Client


async def main(user: str, room: str, url: str) -> None:
    async with Client(url, user, tags=(room,), reconnect=True) as client:

        async def show() -> None:
            async for msg in client:
                print(json.loads(msg.data))

        printer = asyncio.ensure_future(show())
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            await client.send(json.dumps({"room": room, "text": line.rstrip()}).encode())
        printer.cancel()


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    asyncio.run(main(args[0], args[1], args[2] if len(args) > 2 else "ws://127.0.0.1:8080/conn"))
