"""The gateway's HTTP/1.1 client to replicas: pooled keep-alive connections, nothing more.

A request to a replica is one write of head and body; the answer is read by an asyncio
Protocol that looks for the end of the head and then Content-Length bytes. Per request
this costs a fraction of a general-purpose client (aiohttp's cost the gateway more CPU
than the replica spent embedding; see docs/gateway.md). It speaks only what the model
server answers: a Content-Length body, keep-alive unless `Connection: close`. Anything
else (a chunked answer) is an UpstreamError, as is a connection that fails or closes.
"""

import asyncio
import contextlib
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

MAX_IDLE_PER_ENDPOINT = 256
MAX_HEAD_BYTES = 64 * 1024


class UpstreamError(ConnectionError):
    """The replica could not be reached, or closed the connection before answering."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str | None
    body: bytes


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.answered = 0
        self._buf = bytearray()
        self._head: tuple[int, str | None, int, bool] | None = None  # status, type, length, close
        self._body_at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:  # one write per request: nothing to gain from Nagle's delay
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(UpstreamError(f"connection closed: {exc or 'by peer'}"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self.waiter is None or self.waiter.done():
            return
        if self._head is None and not self._parse_head():
            return
        assert self._head is not None
        status, content_type, length, close = self._head
        end = self._body_at + length
        if len(self._buf) < end:
            return
        body = bytes(self._buf[self._body_at:end])
        del self._buf[:end]
        self._head = None
        if close:
            self.closed = True
            assert self.transport is not None
            self.transport.close()
        self.answered += 1
        self.waiter.set_result(Answer(status, content_type, body))

    def _parse_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                self._fail("response head too large")
            return False
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._fail(f"bad status line {lines[0][:80]!r}")
            return False
        length, content_type, close = None, None, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            if key == "content-length":
                length = int(value.strip())
            elif key == "content-type":
                content_type = value.strip()
            elif key == "connection":
                close = value.strip().lower() == "close"
            elif key == "transfer-encoding":
                self._fail("chunked answers are not supported")
                return False
        if length is None:
            self._fail("answer without Content-Length")
            return False
        self._head = (status, content_type, length, close)
        self._body_at = end + 4
        return True

    def _fail(self, why: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(UpstreamError(why))
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """Keep-alive connections to replicas, by endpoint (`http://host:port`)."""

    def __init__(self, timeout_s: float, connect_timeout_s: float = 2.0) -> None:
        self._idle: dict[str, list[_Connection]] = {}
        self._addresses: dict[str, tuple[str, int, bytes]] = {}
        self._timeout_s, self._connect_timeout_s = timeout_s, connect_timeout_s

    def _address(self, endpoint: str) -> tuple[str, int, bytes]:
        known = self._addresses.get(endpoint)
        if known is None:
            parts = urlsplit(endpoint)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            known = (host, port, f"Host: {host}:{port}\r\n".encode())
            self._addresses[endpoint] = known
        return known

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(_Connection, host, port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn

    async def request(self, endpoint: str, method: str, path: str, body: bytes | None,
                      headers: Mapping[str, str]) -> Answer:
        """One request; a kept-alive connection that turns out closed is retried once on a
        fresh one (the replica closed it idle, before reading this request)."""
        host, port, host_line = self._address(endpoint)
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), host_line]
        head += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()]
        head.append(b"Content-Length: %d\r\n\r\n" % len(body or b""))
        data = b"".join(head) + (body or b"")
        idle = self._idle.get(endpoint)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                return await self._exchange(endpoint, conn, data)
            except UpstreamError:
                if conn.answered == 0:
                    raise
                break  # a stale kept-alive connection: try a fresh one below
        return await self._exchange(endpoint, await self._connect(host, port), data)

    async def _exchange(self, endpoint: str, conn: _Connection, data: bytes) -> Answer:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        conn.waiter = waiter
        assert conn.transport is not None
        conn.transport.write(data)
        timer = loop.call_later(self._timeout_s, _expire, waiter, self._timeout_s)
        try:
            answer = await waiter
        except BaseException:
            conn.closed = True
            conn.transport.close()
            raise
        finally:
            timer.cancel()
            conn.waiter = None
        if not conn.closed:
            pool = self._idle.setdefault(endpoint, [])
            if len(pool) < MAX_IDLE_PER_ENDPOINT:
                pool.append(conn)
            else:
                conn.transport.close()
        return answer

    def forget(self, endpoints: set[str]) -> None:
        """Close idle connections to endpoints no longer routed to."""
        for endpoint in [e for e in self._idle if e not in endpoints]:
            for conn in self._idle.pop(endpoint):
                if conn.transport is not None:
                    conn.transport.close()
            self._addresses.pop(endpoint, None)

    def close(self) -> None:
        self.forget(set())


def _expire(waiter: asyncio.Future[Answer], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no answer within {timeout_s:g}s"))
