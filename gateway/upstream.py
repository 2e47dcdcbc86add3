"""The gateway's HTTP/1.1 client to replicas: pooled keep-alive connections, nothing more.

A request to a replica is one write of head and body; the answer is read by an asyncio
Protocol that looks for the end of the head and then Content-Length bytes. Per request
this costs a fraction of a general-purpose client (aiohttp's cost the gateway more CPU
than the replica spent embedding; see docs/gateway.md). It speaks only what the model
server answers: a Content-Length body, keep-alive unless `Connection: close`. Anything
else (a chunked answer) is an UpstreamError, as is a connection that fails or closes.

Review M6: an answer longer than `max_answer_bytes` is refused from its head, before any of
its body is buffered; only a request the replica's process never read may be retried
elsewhere: a failed connect (`ConnectFailed`), or one its kernel reset unread (`NotTaken`:
an RST before any byte of the answer, which Linux sends only when the socket is closed
with the request still unread, as for a connection waiting in the accept queue of a
replica that stops listening, or a kept-alive one it closed as the request crossed). A
replica that read the request and then closed (the FIN of a process that died on it) is
never sent it again. A kept-alive
connection is not reused after `MAX_IDLE_S`, well inside the model server's keep-alive
(aiohttp's 75 s), nor once the replica has closed it (`quiet`, checked just before the
write), so a request is not written to a connection known to be dead.
"""

import asyncio
import contextlib
import functools
import os
import select
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

MAX_IDLE_PER_ENDPOINT = 256
MAX_HEAD_BYTES = 64 * 1024
MAX_IDLE_S = 30.0
# After an EOF with no answer, how long the reset that follows a request written to an
# already-closed socket may take to arrive (about one round trip): waited only then.
RESET_SETTLE_S = 0.02
_RESET = (ConnectionResetError, BrokenPipeError)


class UpstreamError(ConnectionError):
    """The replica could not be reached, or closed the connection before answering."""


class ConnectFailed(UpstreamError):
    """No connection to the replica: nothing of the request reached it, so another replica
    may take it."""


class NotTaken(UpstreamError):
    """The replica's kernel reset the connection before any byte of the answer: its process
    never read the request whole, so another replica may take it."""


class AnswerTooLarge(UpstreamError):
    """The replica's answer is longer than the gateway buffers."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str | None
    body: bytes
    tokens: str | None = None  # X-Greenroom-Tokens: what the model computed (issue 29)


class _Connection(asyncio.Protocol):
    def __init__(self, max_answer_bytes: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.answered = 0
        self.idle_since = 0.0
        self._max_answer_bytes = max_answer_bytes
        self._buf = bytearray()
        self._head: tuple[int, str | None, int, bool] | None = None  # status, type, length, close
        self._tokens: str | None = None
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
            kind = NotTaken if isinstance(exc, _RESET) and self._unanswered() else UpstreamError
            self.waiter.set_exception(kind(f"connection closed: {exc or 'by peer'}"))

    def eof_received(self) -> bool | None:
        """The replica closed its side. With a request pending and no byte of its answer
        here, stay half-open a round trip: a reset that follows tells the request was
        written to a socket already closed, unread (`NotTaken`)."""
        if self.waiter is None or self.waiter.done() or not self._unanswered():
            return None  # the transport closes; connection_lost fails any pending request
        self.closed = True
        asyncio.get_running_loop().call_later(RESET_SETTLE_S, self._judge_eof)
        return True

    def _judge_eof(self) -> None:
        if self.waiter is None or self.waiter.done():
            return  # the request ended meanwhile (its timeout), which closed the transport
        sock = self.transport.get_extra_info("socket") if self.transport else None
        error = 0
        if sock is not None:
            with contextlib.suppress(OSError):
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        kind = NotTaken if error else UpstreamError
        self._fail(f"connection closed: {os.strerror(error) if error else 'by peer'}", kind)

    def _unanswered(self) -> bool:
        return self._head is None and not self._buf

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
        self.waiter.set_result(Answer(status, content_type, body, self._tokens))

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
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if "transfer-encoding" in fields:
            self._fail("chunked answers are not supported")
            return False
        length = int(fields["content-length"]) if "content-length" in fields else None
        content_type = fields.get("content-type")
        close = fields.get("connection", "").lower() == "close"
        self._tokens = fields.get("x-greenroom-tokens")
        if not self._length_ok(length):
            return False
        assert length is not None
        self._head = (status, content_type, length, close)
        self._body_at = end + 4
        return True

    def quiet(self) -> bool:
        """Whether this idle connection is still open and silent: an EOF or a reset the
        replica sent (it closed the connection, or its process died) may wait unread before
        the event loop sees it, and a request written then would be lost, not retried."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None:
            return True
        # Readable now means an EOF, a reset or bytes nobody asked for. One poll of the
        # descriptor, reading nothing: a peek through a second socket object on it cost
        # about five times as much (object, recv, detach) on every request.
        poller = select.poll()  # poll, not select: no limit on the descriptor's number
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)

    def _length_ok(self, length: int | None) -> bool:
        """A Content-Length is named and within the cap; else the request fails now."""
        if length is None:
            self._fail("answer without Content-Length")
            return False
        if length > self._max_answer_bytes:
            self._fail(f"answer of {length} bytes is over the gateway's limit of "
                       f"{self._max_answer_bytes} bytes", AnswerTooLarge)
            return False
        return True

    def _fail(self, why: str, kind: type[UpstreamError] = UpstreamError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(kind(why))
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """Keep-alive connections to replicas, by endpoint (`http://host:port`)."""

    def __init__(self, timeout_s: float, connect_timeout_s: float = 2.0,
                 max_answer_bytes: int = 32 * 1024 * 1024) -> None:
        self._idle: dict[str, list[_Connection]] = {}
        self._addresses: dict[str, tuple[str, int, bytes]] = {}
        self._timeout_s, self._connect_timeout_s = timeout_s, connect_timeout_s
        self._new = functools.partial(_Connection, max_answer_bytes)

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
                _, conn = await loop.create_connection(self._new, host, port)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn

    async def request(self, endpoint: str, method: str, path: str, body: bytes | None,
                      headers: Mapping[str, str]) -> Answer:
        """One request, on a kept-alive connection or a fresh one; sent once (`headers` are
        ASCII: the caller keeps only such values)."""
        host, port, host_line = self._address(endpoint)
        fields = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
        body = body or b""
        data = b"".join((f"{method} {path} HTTP/1.1\r\n".encode(), host_line,
                         fields.encode("latin-1"),
                         b"Content-Length: %d\r\n\r\n" % len(body), body))
        conn = self._kept(endpoint) or await self._connect(host, port)
        return await self._exchange(endpoint, conn, data)

    def _kept(self, endpoint: str) -> _Connection | None:
        """A kept-alive connection, open and idle for less than MAX_IDLE_S; None if none."""
        idle, now = self._idle.get(endpoint), time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < MAX_IDLE_S and conn.quiet():
                return conn
            if conn.transport is not None:
                conn.transport.close()
        return None

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
                conn.idle_since = time.monotonic()
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
