"""The gateway's front: its hottest request served without aiohttp's server (issue 29).

At MiniLM's rate each request wakes the gateway alone, and aiohttp's server side (its
request handler task, request, router, middleware and response objects) was about 270 us
of the gateway's CPU per request, more than its own logic (bench/gateway_split.py; see
docs/gateway.md). `Front` is the protocol of every connection: it reads each request's head
itself, and serves the one request that dominates traffic, a `POST /serve/{name}{op}` with
no token for a public deployment (TEI's routes; `FAST_OPS`), with the same code the aiohttp
handler runs (`gateway.app.serve_anonymous`). Any other request, or anything it does not
read plainly (another method or version, a query string, a quoted or unusual name, a
token, chunked or compressed bodies, `Expect`, `Upgrade`, `Connection` other than
keep-alive, a duplicate or missing Content-Length, a control or non-ASCII byte, a body over
`client_max_size`), hands the connection over to aiohttp's own protocol with the bytes read
so far, for good: aiohttp then answers exactly as before.

What a served request keeps: keep-alive (and pipelined requests, answered in order), the
caller's disconnect cancelling its forward (as `handler_cancellation`: the replica's
connection closes and it drops the queued work), an idle connection closed after
`KEEPALIVE_S` as aiohttp does, and on shutdown the requests in flight finish first, each
answer from then on saying `Connection: close`, and what comes on an open connection for
`DRAIN_S` more is still answered so.
"""

import asyncio
import contextlib
import re
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from db.deployments import Route

FAST_OPS = frozenset({"", "/", "/embed", "/embed_all", "/tokenize", "/decode",
                      "/v1/embeddings"})
PREFIX = "/serve/"
MAX_HEAD = 16 * 1024  # past it without a head's end: aiohttp's to answer
KEEPALIVE_S = 75.0  # aiohttp's keepalive_timeout
# On SIGTERM, how long the open connections are still answered (each answer its
# connection's last), as the model server does (model_server/server.py).
DRAIN_S, DRAIN_POLL_S = 0.5, 0.02
_NAME = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,255}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # after the CRLFs are taken out
# Headers whose presence makes a request aiohttp's: a token (access, limits), the body's
# framing or encoding, an expectation or an upgrade.
_HAND_OVER = frozenset({"authorization", "transfer-encoding", "content-encoding", "expect",
                        "upgrade", "te", "trailer"})
_REASONS = {s.value: s.phrase for s in HTTPStatus}

# (the route, the request's path, the op at the replica, its headers, its body) -> answer.
Serve = Callable[[Route, str, str, CIMultiDict[str], bytes], Coroutine[Any, Any, web.Response]]
Lookup = Callable[[str], Route | None]


class Served:
    """A request the front serves: its deployment's route, path, op and headers, and the
    length of its body."""

    __slots__ = ("headers", "length", "op", "path", "route")

    def __init__(self, route: Route, path: str, op: str, headers: CIMultiDict[str],
                 length: int) -> None:
        self.route, self.path, self.op, self.headers, self.length = (route, path, op, headers,
                                                                     length)


def parse(head: bytes, lookup: Lookup, max_body: int) -> Served | None:
    """The request in `head` (up to the blank line) if the front serves it, else None."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    if _CONTROL.search(text.replace("\r\n", "")):
        return None
    lines = text.split("\r\n")
    target = _target(lines[0])
    fields = _fields(lines[1:]) if target is not None else None
    if target is None or fields is None or fields[1] > max_body:
        return None
    path, name, op = target
    route = lookup(name)
    if route is None or route.access_level != "public":
        return None  # the 404, or an access decision: aiohttp's path
    return Served(route, path, op if op not in ("", "/") else "/", *fields)


def _target(line: str) -> tuple[str, str, str] | None:
    """(path, deployment name, op) of a `POST /serve/{name}{op} HTTP/1.1` line."""
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "POST" or parts[2] != "HTTP/1.1":
        return None
    path = parts[1]
    if not path.startswith(PREFIX):
        return None
    name, slash, rest = path[len(PREFIX):].partition("/")
    op = slash + rest
    if op not in FAST_OPS or _NAME.fullmatch(name) is None:
        return None
    return path, name, op


def _fields(lines: list[str]) -> tuple[CIMultiDict[str], int] | None:
    """The header fields and the body's length, None for any the front leaves to aiohttp."""
    headers: CIMultiDict[str] = CIMultiDict()
    length: int | None = None
    for line in lines:
        key, colon, value = line.partition(":")
        if not colon or not key or key.strip(" \t") != key or " " in key or "\t" in key:
            return None
        lower, value = key.lower(), value.strip(" \t")
        if lower in _HAND_OVER or (lower == "connection" and value.lower() != "keep-alive"):
            return None
        if lower == "content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        headers.add(key, value)
    return None if length is None else (headers, length)


def wire(response: web.Response, close: bool = False) -> bytes:
    """The response as aiohttp would write it (Content-Length, Date, Server; `Connection:
    close` when it is the connection's last)."""
    body = response.body
    assert isinstance(body, bytes)
    status = response.status
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in response.headers.items()]
    if "Content-Type" not in response.headers:
        lines.append("Content-Type: application/octet-stream\r\n")
    if close:
        lines.append("Connection: close\r\n")
    lines.append(f"Content-Length: {len(body)}\r\nDate: {_date()}\r\n"
                 f"Server: {SERVER_SOFTWARE}\r\n\r\n")
    return "".join(lines).encode("latin-1") + body


_dated: list[Any] = [None, ""]


def _date() -> str:
    second = int(time.time())
    if _dated[0] != second:
        _dated[:] = [second, formatdate(second, usegmt=True)]
    return str(_dated[1])


class Front(asyncio.Protocol):
    """One connection: requests the front serves, until one it does not (then aiohttp's)."""

    def __init__(self, fronts: "Fronts") -> None:
        self._fronts = fronts
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._paused = False
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._fronts.open.add(self)
        self._fronts.tcp_nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fronts.open.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self._task is not None:
            self._task.cancel()  # the caller went away: its forward ends (issue 29)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._task is None:
            self._next()
        elif len(self._buf) > self._fronts.max_body + MAX_HEAD and not self._paused:
            self._paused = True  # pipelined bytes beyond one request: wait for this one
            assert self._transport is not None
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        """The caller sent all it will: the answer in flight is still written, then the
        connection closes."""
        self._eof = True
        return self._task is not None

    def _next(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        buf = self._buf
        if self._eof and not buf:
            self._close()  # the caller sent all it will, and all of it is answered
            return
        if not buf:
            self._idle = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._close)
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._hand_over()
            elif self._eof:
                self._close()  # half a request, and no more to come
            return
        request = parse(bytes(buf[:end]), self._fronts.lookup, self._fronts.max_body)
        if request is None:
            self._hand_over()
            return
        start = end + 4
        if len(buf) < start + request.length:
            if self._eof:
                self._close()
            return
        body = bytes(buf[start:start + request.length])
        del buf[:start + request.length]
        self._task = asyncio.get_running_loop().create_task(self._answer(request, body))

    async def _answer(self, request: Served, body: bytes) -> None:
        try:
            response = await self._fronts.serve(request.route, request.path, request.op,
                                                request.headers, body)
        finally:
            self._task = None
        if self._transport is None or self._transport.is_closing():
            return
        closing = self._fronts.closing  # the gateway is stopping: this answer is the last
        self._transport.write(wire(response, closing))
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        if closing:
            self._close()
        else:
            self._next()  # a pipelined request, or an idle wait (or a close after EOF)

    def _hand_over(self) -> None:
        """The connection is aiohttp's from here: its protocol gets the bytes read so far."""
        transport = self._transport
        assert transport is not None and self._task is None
        self._fronts.open.discard(self)
        inner = self._fronts.aiohttp()
        transport.set_protocol(inner)
        inner.connection_made(transport)
        if self._paused:
            self._paused = False
            transport.resume_reading()
        data, self._buf = bytes(self._buf), bytearray()
        self._transport = None
        inner.data_received(data)

    def _close(self) -> None:
        if self._transport is not None and self._task is None:
            self._transport.close()

    @property
    def task(self) -> "asyncio.Task[None] | None":
        """The request in flight, if any."""
        return self._task


class Fronts:
    """What every connection's `Front` shares, and the open ones (for shutdown)."""

    def __init__(self, aiohttp: Callable[[], asyncio.Protocol], lookup: Lookup, serve: Serve,
                 max_body: int) -> None:
        self.aiohttp, self.lookup, self.serve, self.max_body = aiohttp, lookup, serve, max_body
        self.open: set[Front] = set()
        self.closing = False

    def __call__(self) -> Front:
        return Front(self)

    @staticmethod
    def tcp_nodelay(transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def drain(self, seconds: float) -> None:
        """For up to `seconds`, answer what comes on the open connections, each answer
        saying `Connection: close` and ending its connection, until their clients are gone:
        a request written just as the gateway stopped is answered, not reset."""
        self.closing = True
        for _ in range(round(seconds / DRAIN_POLL_S)):
            if not self.open:
                return
            await asyncio.sleep(DRAIN_POLL_S)

    async def shutdown(self, timeout_s: float) -> None:
        """Close idle connections; let the requests in flight finish (up to `timeout_s`)."""
        self.closing = True
        for front in list(self.open):
            front._close()
        busy = [front.task for front in self.open if front.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout_s)


class FrontSite(web.BaseSite):
    """A TCP site (SO_REUSEPORT) whose connections start with a `Front`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, fronts: Fronts) -> None:
        super().__init__(runner)
        self._host, self._port, self._fronts = host, port, fronts

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._fronts, self._host, self._port,
                                                reuse_address=True, reuse_port=True)


async def run(app: web.Application, host: str, port: int, max_body: int,
              lookup: Callable[[], Lookup], serve: Serve,
              shutdown_timeout_s: float = 60.0) -> None:
    """Serve `app` on host:port with the front, until SIGINT or SIGTERM (as `web.run_app`
    with `handler_cancellation`, no access log): then stop listening, let the requests in
    flight finish, and clean up."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    server = runner.server
    assert server is not None
    fronts = Fronts(server, lookup(), serve, max_body)  # lookup: the gateway made at setup
    site = FrontSite(runner, host, port, fronts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await site.start()
        await stop.wait()
    finally:
        await site.stop()
        await fronts.drain(DRAIN_S)
        await fronts.shutdown(shutdown_timeout_s)
        await runner.cleanup()
