"""HAProxy's Runtime API over its admin socket: one command per connection.

Answers are text; a command HAProxy refuses answers with a message rather than an
error status, so callers that must know check the text (`expect`).
"""

import asyncio
import csv
import io
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 5.0


class RuntimeApiError(Exception):
    """HAProxy refused a command, or its socket could not be reached."""


@dataclass(frozen=True, slots=True)
class ServerStat:
    """One server's row of `show stat`."""

    backend: str
    server: str
    current: int  # scur: requests being served by it now
    total: int  # stot: requests it has served
    queued: int  # qcur


class RuntimeApi:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    async def command(self, line: str) -> str:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(str(self.socket))
                try:
                    writer.write(line.encode() + b"\n")
                    await writer.drain()
                    return (await reader.read()).decode()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            raise RuntimeApiError(f"{line!r}: {exc}") from exc

    async def expect(self, line: str, *ok: str) -> str:
        """Run `line`; RuntimeApiError unless the answer is empty or starts with one of `ok`."""
        answer = await self.command(line)
        text = answer.strip()
        if text and not any(text.startswith(prefix) for prefix in ok):
            raise RuntimeApiError(f"{line!r}: {text}")
        return answer

    async def servers(self) -> list[ServerStat]:
        """Every server of every backend (`show stat -1 4 -1`: servers only)."""
        text = (await self.command("show stat -1 4 -1")).lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return [ServerStat(r["pxname"], r["svname"], int(r["scur"] or 0), int(r["stot"] or 0),
                           int(r["qcur"] or 0)) for r in rows if r.get("svname")]

    async def backends(self) -> dict[str, int]:
        """`scur` of every backend (`show stat -1 2 -1`: backends only, one row each)."""
        text = (await self.command("show stat -1 2 -1")).lstrip("# ")
        return {r["pxname"]: int(r["scur"] or 0) for r in csv.DictReader(io.StringIO(text))
                if r.get("pxname")}
