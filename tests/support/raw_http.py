"""One HTTP/1.1 request at a time on a connection the test holds open itself (keep-alive),
to see exactly what a server answers and whether it ends the connection."""

import asyncio
import json


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str,
              text: str) -> asyncio.Task[str]:
    """Write a keep-alive `POST path` of `{"inputs": text}`; a task that reads the head of
    its answer and skips its body ('' if the connection closed with no answer)."""
    body = json.dumps({"inputs": text}).encode()
    writer.write(b"POST %s HTTP/1.1\r\nHost: greenroom\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
    await writer.drain()

    async def head() -> str:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return ""
        length = next(int(line.split(":")[1]) for line in raw.decode().split("\r\n")
                      if line.lower().startswith("content-length:"))
        await reader.readexactly(length)
        return raw.decode()

    return asyncio.create_task(head())
