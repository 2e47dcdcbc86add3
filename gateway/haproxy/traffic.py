"""What the HAProxy engine carried per generation, for the canary judge (issue 27): the
report's `traffic`, in the Python gateway's shape (gateway/traffic.py `TrafficTally`),
so worker/canary.py reads both engines' reports alike.

- Requests and errors come from HAProxy's own counters: each slot backend's `stot` and
  `hrsp_5xx` (5xx answers, HAProxy's own 502/503/504 when no replica could take or
  answer the request among them), read with the servers' rows the controller reads anyway
  (`RuntimeApi.rows`). A slot serves one generation at a time and is read until its last
  server is freed, so the increase of its counters between two reads is the traffic of
  the generation it serves then: exact, whatever the load.
- The latency histogram comes from a log line per request of the `canary` frontend
  (`slotK Ta`, gateway/haproxy/config.py), which every request of a deployment in a
  canary passes on its way to its generation's slot, held in HAProxy's `traffic` ring
  and forwarded over a unix stream to the controller (`traffic.sock`). HAProxy 2.6 keeps
  no histogram itself (`show stat` has averages over the last 1,024 requests; the timer
  sample fetches came in 2.7), and a line per request costs less than any stick-table
  scheme of buckets. `Ta` is in whole milliseconds, truncated: a line's time is taken as
  the middle of its millisecond. A line is lost only when the ring (1 MB: tens of
  thousands of lines) overflows; the histogram is then a sample, never a wrong request
  or error count. Only canary traffic is timed: a deployment served directly outside a
  canary costs no log line (its requests and errors are still counted).
"""

import asyncio
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import structlog

from gateway.haproxy.runtime_api import BackendStat
from gateway.traffic import TrafficTally
from schemas.gateway import GenerationTraffic

log = structlog.get_logger(__name__)

# How often the controller reads the lines: the judge reads reports once a second.
READ_PAUSE_S = 0.1
_READ_BYTES = 1 << 18

Owners = dict[str, tuple[UUID, int]]  # slot backend → the (model, generation) it serves


class HaproxyTraffic:
    """Per-generation counters of what HAProxy carried, from its counters and log lines."""

    def __init__(self) -> None:
        self.tally = TrafficTally()
        self._last: dict[str, tuple[int, int]] = {}  # backend → (stot, hrsp_5xx) last read
        self.lines = 0  # log lines read (and folded, when their slot serves a generation)

    def count(self, owners: Owners, rows: list[BackendStat]) -> None:
        """Fold the increase of each slot's counters since the last read into the
        generation it serves. A backend never read before counts from HAProxy's start:
        a free slot takes no request, so all it carried is its generation's."""
        for row in rows:
            requests, errors = self._last.get(row.backend, (0, 0))
            self._last[row.backend] = (row.requests, row.errors)
            owner = owners.get(row.backend)
            if owner is None or row.requests < requests:
                continue
            tally = self.tally.get(*owner)
            tally.requests += row.requests - requests
            tally.errors += max(0, row.errors - errors)

    def line(self, data: bytes, owners: Owners) -> None:
        """One log line, `slotK Ta` (milliseconds; -1 when the request never finished)."""
        self.lines += 1
        backend, _, ms = data.strip().partition(b" ")
        owner = owners.get(backend.decode("ascii", "replace"))
        if owner is None or not ms.isdigit():
            return
        self.tally.get(*owner).time((int(ms) + 0.5) / 1000)

    def report(self, live: set[tuple[UUID, int]]) -> dict[str, dict[str, GenerationTraffic]]:
        """The report's `traffic`; generations no longer served are dropped first."""
        self.tally.keep(live)
        return self.tally.report()


def bind(path: Path) -> socket.socket:
    """The stream socket the `traffic` ring forwards to (0600), bound before HAProxy
    starts (HAProxy connects to it, and again should the stream close)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        path.chmod(0o600)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def listen(sock: socket.socket, traffic: HaproxyTraffic, owners: Callable[[], Owners]
                 ) -> asyncio.Server:
    """Fold every line HAProxy's ring sends on `sock` into `traffic` (`HaproxyTraffic.line`)."""

    async def read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rest = b""
        try:
            while data := await reader.read(_READ_BYTES):
                *lines, rest = (rest + data).split(b"\n")
                known = owners()
                for line in lines:
                    traffic.line(line, known)
                # Lines wait in the socket and HAProxy's ring meanwhile: one wakeup per
                # READ_PAUSE_S rather than per request (a wakeup per line cost the canary's
                # requests 0.07 ms of p50 on two cores, bench/traffic_split.py).
                await asyncio.sleep(READ_PAUSE_S)
        except OSError as exc:
            log.warning("haproxy_traffic_log_error", error=str(exc))
        finally:
            writer.close()

    return await asyncio.start_unix_server(read, sock=sock)
