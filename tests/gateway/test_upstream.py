"""The gateway's own client to replicas (gateway/upstream.py) against a real aiohttp server."""

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.upstream import (
    AnswerTooLarge,
    ConnectFailed,
    NotTaken,
    Upstream,
    UpstreamError,
    _Connection,
)
from worker.runtimes.process import free_port


@pytest.fixture
async def replica() -> AsyncIterator[str]:
    """A stand-in replica whose server closes idle keep-alive connections after 0.2 s."""
    async def embed(request: web.Request) -> web.Response:
        return web.json_response({"got": (await request.read()).decode(),
                                  "type": request.headers.get("Content-Type")})

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"part")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/embed", embed)
    app.router.add_get("/chunked", chunked)
    runner = web.AppRunner(app, keepalive_timeout=0.2)
    await runner.setup()
    port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_keep_alive_and_a_connection_the_replica_closed_idle(replica: str) -> None:
    upstream = Upstream(timeout_s=5)
    headers = {"Content-Type": "application/json"}
    first = await upstream.request(replica, "POST", "/embed", b'{"inputs": "a"}', headers)
    second = await upstream.request(replica, "POST", "/embed", b'{"inputs": "b"}', headers)
    assert (first.status, second.status) == (200, 200)
    assert b'"got": "{\\"inputs\\": \\"b\\"}"' in second.body
    assert second.content_type is not None and second.content_type.startswith("application/json")
    await asyncio.sleep(0.6)  # the replica has closed the idle kept-alive connection
    third = await upstream.request(replica, "POST", "/embed", b"{}", headers)
    assert third.status == 200
    upstream.close()


async def test_unreachable_and_unsupported_answers_are_upstream_errors(replica: str) -> None:
    upstream = Upstream(timeout_s=5)
    with pytest.raises(UpstreamError):
        await upstream.request(f"http://127.0.0.1:{free_port('127.0.0.1')}", "GET", "/", None,
                               {})
    with pytest.raises(UpstreamError, match="chunked"):
        await upstream.request(replica, "GET", "/chunked", None, {})
    upstream.close()


async def test_a_failed_connect_is_its_own_error_and_a_long_answer_is_refused(
        replica: str) -> None:
    """Only ConnectFailed (nothing sent) may be retried elsewhere (review M6); an answer
    over the cap fails from its head, before its body is buffered."""
    upstream = Upstream(timeout_s=5, max_answer_bytes=20)
    with pytest.raises(ConnectFailed):
        await upstream.request(f"http://127.0.0.1:{free_port('127.0.0.1')}", "GET", "/", None,
                               {})
    with pytest.raises(AnswerTooLarge, match="over the gateway's limit of 20 bytes"):
        await upstream.request(replica, "POST", "/embed", b'{"inputs": "a longer one"}', {})
    small = await Upstream(timeout_s=5, max_answer_bytes=100).request(
        replica, "POST", "/embed", b"{}", {})
    assert small.status == 200
    upstream.close()


async def test_quiet_tells_a_connection_the_replica_closed_before_the_loop_sees_it() -> None:
    """A kept-alive connection whose EOF is in the kernel but not yet read by the loop is
    not quiet (a request written to it would be lost); an open, silent one is."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Connection(1024), "127.0.0.1", port)
    accepted, _ = server.accept()
    try:
        assert conn.quiet()
        accepted.close()  # the replica closes it...
        time.sleep(0.1)  # noqa: ASYNC251 ...and the loop does not run meanwhile (on purpose)
        assert not conn.closed, "the loop has not seen the EOF yet"
        assert not conn.quiet()
    finally:
        assert conn.transport is not None
        conn.transport.close()
        server.close()


REQUEST = b"POST /embed HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"


async def _pending_request(replica_side: str) -> BaseException:
    """A request written on a connection whose replica side then does `replica_side`; the
    error its waiter ends with."""
    server = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Connection(1024), "127.0.0.1",
                                           server.getsockname()[1])
    accepted, _ = server.accept()
    conn.waiter = loop.create_future()
    assert conn.transport is not None
    if replica_side == "closes as the request crosses":  # its FIN, then our request
        accepted.close()
        conn.transport.write(REQUEST)
    else:
        conn.transport.write(REQUEST)
        time.sleep(0.05)  # noqa: ASYNC251 the request is in the replica's kernel
        if replica_side == "reads it and closes":
            accepted.recv(len(REQUEST))
        elif replica_side == "resets it unread":
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.close()  # "closes it unread" too: Linux resets a socket with unread bytes
    try:
        await asyncio.wait_for(conn.waiter, 2)
    except (UpstreamError, TimeoutError) as exc:  # what the test looks at
        return exc
    finally:
        conn.transport.close()
        server.close()
    raise AssertionError("the request did not fail")


@pytest.mark.parametrize("replica_side", ["resets it unread", "closes it unread",
                                          "closes as the request crosses"])
async def test_a_request_the_replica_never_read_is_not_taken(replica_side: str) -> None:
    """The replica's kernel reset the request before its process read it (after an EOF
    too, when its close crossed the request): `NotTaken`, which routing sends elsewhere."""
    error = await _pending_request(replica_side)
    assert isinstance(error, NotTaken), repr(error)


async def test_a_request_the_replica_read_and_then_closed_on_is_not_retryable() -> None:
    """Review M6: a replica that read the request and died (its FIN, no reset) failed on it;
    the request is not offered to another replica."""
    error = await _pending_request("reads it and closes")
    assert isinstance(error, UpstreamError) and not isinstance(error, NotTaken), repr(error)
