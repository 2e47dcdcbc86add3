"""HAProxy's Runtime API over its admin socket: one command per connection.

Answers are text; a command HAProxy refuses answers with a message rather than an
error status, so callers that must know check the text (`expect`).
"""

import asyncio
import csv
from collections.abc import Iterable
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

    async def servers(self, backends: Iterable[str]) -> list[ServerStat]:
        """Every server of `backends` (`show stat <backend> 4 -1`: servers only)."""
        rows = await self._stat(backends, 4)
        return [ServerStat(r["pxname"], r["svname"], int(r["scur"] or 0), int(r["stot"] or 0),
                           int(r["qcur"] or 0)) for r in rows if r.get("svname")]

    async def backends(self, names: Iterable[str]) -> dict[str, int]:
        """`scur` of the backends `names` (`show stat <backend> 2 -1`: one row each)."""
        return {r["pxname"]: int(r["scur"] or 0) for r in await self._stat(names, 2)
                if r.get("pxname")}

    async def _stat(self, backends: Iterable[str], kind: int) -> list[dict[str, str]]:
        """`show stat` rows of `kind` (2 backend, 4 servers) for just these backends, in one
        round trip (commands joined by `;`). Only those: the whole pool's 64 backends and
        1,024 servers cost HAProxy 0.45 ms (backends) and 5 ms (servers) a read, time its
        one thread is not serving requests; one slot's cost 0.1 ms."""
        names = list(backends)
        if not names:
            return []
        text = await self.command(";".join(f"show stat {name} {kind} -1" for name in names))
        rows: list[dict[str, str]] = []
        header: list[str] = []
        for line in text.splitlines():
            if line.startswith("# "):  # each command's answer starts with its header
                header = line[2:].split(",")
            elif line and header:
                rows.append(dict(zip(header, next(csv.reader([line])), strict=False)))
        return rows
