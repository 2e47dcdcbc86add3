"""gateway/front.py: anonymous requests for public deployments' TEI routes served without
aiohttp's server, everything else handed to aiohttp on the same connection, answered as
before. Real gateway and replica processes, raw sockets for the connection-level cases;
the choice of which requests the front takes is tested on `parse` alone (fast)."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from db.deployments import Route
from gateway.front import parse
from tests.conftest import Proc, start_gateway
from tests.gateway.test_gateway_answers import _until_routed, hashing_replica, serve_from

PUBLIC = Route(uuid4(), "pub", "alice/pub", 1, "public", [])
PRIVATE = Route(uuid4(), "priv", "alice/priv", 1, "private", [])
BODY = b'{"inputs": "x"}'


def _lookup(name: str) -> Route | None:
    return {"pub": PUBLIC, "priv": PRIVATE}.get(name)


def _head(first: str = "POST /serve/pub/embed HTTP/1.1", *fields: str) -> bytes:
    lines = [first, "Host: gw", "Content-Type: application/json",
             f"Content-Length: {len(BODY)}", *fields]
    return "\r\n".join(lines).encode("latin-1")


def test_the_front_takes_only_plain_anonymous_posts_for_public_deployments() -> None:
    taken = parse(_head(), _lookup, 1024)
    assert taken is not None
    assert (taken.route, taken.path, taken.op, taken.length) == (PUBLIC, "/serve/pub/embed",
                                                                 "/embed", len(BODY))
    assert taken.headers["content-type"] == "application/json"
    for target, op in (("/serve/pub", "/"), ("/serve/pub/", "/"),
                       ("/serve/pub/v1/embeddings", "/v1/embeddings")):
        found = parse(_head(f"POST {target} HTTP/1.1"), _lookup, 1024)
        assert found is not None and found.op == op, target
    assert parse(_head("POST /serve/pub/embed HTTP/1.1", "Connection: keep-alive"),
                 _lookup, 1024) is not None
    handed_over = [
        _head("GET /serve/pub/health HTTP/1.1"),  # not a POST
        _head("POST /serve/pub/embed HTTP/1.0"),  # another version
        _head("POST /serve/pub/embed?x=1 HTTP/1.1"),  # a query
        _head("POST /serve/pub/feedback HTTP/1.1"),  # not a TEI route
        _head("POST /v1/embeddings HTTP/1.1"),  # routed by its body
        _head("POST /serve/a%2Fb/embed HTTP/1.1"),  # quoted
        _head("POST /serve/../embed HTTP/1.1"),
        _head("POST /serve/priv/embed HTTP/1.1"),  # an access decision
        _head("POST /serve/nobody/embed HTTP/1.1"),  # the 404
        _head("POST /serve/pub/embed HTTP/1.1", "Authorization: Bearer x"),
        _head("POST /serve/pub/embed HTTP/1.1", "Transfer-Encoding: chunked"),
        _head("POST /serve/pub/embed HTTP/1.1", "Content-Encoding: gzip"),
        _head("POST /serve/pub/embed HTTP/1.1", "Expect: 100-continue"),
        _head("POST /serve/pub/embed HTTP/1.1", "Connection: close"),
        _head("POST /serve/pub/embed HTTP/1.1", "Content-Length: 2"),  # a second length
        _head("POST /serve/pub/embed HTTP/1.1", "X-Id: caf\u00e9"),  # not ASCII
        _head("POST /serve/pub/embed HTTP/1.1", "X-Id: a\x01b"),  # a control byte
        _head("POST /serve/pub/embed HTTP/1.1", "Bad Name: x"),
        _head("POST /serve/pub/embed HTTP/1.1", " folded"),
        b"POST /serve/pub/embed HTTP/1.1\r\nHost: gw",  # no length
    ]
    for head in handed_over:
        assert parse(head, _lookup, 1024) is None, head
    assert parse(_head(), _lookup, len(BODY) - 1) is None  # over client_max_size: the 413


async def _exchange(port: int, data: bytes, answers: int) -> list[tuple[int, dict[str, str],
                                                                          bytes]]:
    """Write `data` on one connection and read `answers` HTTP answers back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        out = []
        for _ in range(answers):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in
                      (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(fields["content-length"]))
            out.append((int(lines[0].split(" ")[1]), fields, body))
        return out
    finally:
        writer.close()


def _request(path: str, body: bytes = BODY, *fields: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: gw", "Content-Type: application/json",
            f"Content-Length: {len(body)}", *fields]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


@contextlib.asynccontextmanager
async def _served(spawn: Callable[..., Proc], http: aiohttp.ClientSession,
                  pool: asyncpg.Pool, hashing_model: Any, tmp_path: Path,
                  name: str) -> AsyncIterator[int]:
    """A gateway serving the public deployment `name` from a hashing replica; its port."""
    model_id = await hashing_model(name)
    async with hashing_replica(http, tmp_path) as replica:
        await serve_from(pool, model_id, name, [replica])
        base = await start_gateway(spawn, http)
        status, body = await _until_routed(http, f"{base}/serve/{name}/embed", {"inputs": "x"})
        assert status == 200, body
        yield int(base.rsplit(":", 1)[1])


@pytest.mark.timeout(120)
async def test_one_connection_keeps_alive_pipelines_and_hands_over_to_aiohttp(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    async with _served(spawn, http, pool, hashing_model, tmp_path, "front") as port:
        path = "/serve/front/embed"
        data = (_request(path) + _request(path, b'{"inputs": ["a", "b"]}', "X-Request-Id: r-2")
                # a bad deadline: the front's 422, in TEI's error shape
                + _request(path, BODY, "X-Request-Timeout: soon")
                # a token: aiohttp's from here on, on this same connection
                + _request(path, BODY, "Authorization: Bearer not-a-token")
                + _request(path))
        answers = await _exchange(port, data, 5)
    (s1, h1, b1), (s2, h2, b2), (s3, _, b3), (s4, h4, b4), (s5, h5, b5) = answers
    assert (s1, s2, s5) == (200, 200, 200), answers
    assert len(json.loads(b1)) == 1 and len(json.loads(b2)) == 2  # in order
    for fields in (h1, h2, h5):
        assert fields["content-type"].startswith("application/json")
        assert fields["x-greenroom-replica"] and fields["x-greenroom-generation"]
        assert fields["date"] and fields["server"].startswith("Python/")
    assert h2["x-request-id"] == "r-2"
    assert s3 == 422
    error = json.loads(b3)
    assert error["status_code"] == 422 and error["error_type"] == "Validation"
    assert "X-Request-Timeout" in error["message"]
    assert s4 == 401, b4  # aiohttp's answer to a bad token
    assert json.loads(b4)["error_type"] and "x-greenroom-replica" not in h4
    assert len(json.loads(b5)) == 1  # aiohttp's, after the hand-over


@pytest.mark.timeout(120)
async def test_a_caller_that_goes_away_mid_request_leaves_the_gateway_serving(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """A caller that closes its connection with its request in flight (or half sent) costs
    the gateway nothing that lasts: the next callers are answered."""
    async with _served(spawn, http, pool, hashing_model, tmp_path, "gone-front") as port:
        path = "/serve/gone-front/embed"
        for data in (_request(path), _request(path)[:-3], _request(path)[:20]):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            await writer.drain()
            writer.close()
        answers = await _exchange(port, _request(path) * 3, 3)
        assert [status for status, _, _ in answers] == [200, 200, 200]


@pytest.mark.timeout(120)
async def test_a_caller_that_stops_sending_still_gets_every_answer_then_the_close(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    """Two pipelined requests and the caller's half-close (EOF): both are answered, then
    the gateway closes the connection (it does not wait 75 s for more)."""
    async with _served(spawn, http, pool, hashing_model, tmp_path, "eof-front") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request("/serve/eof-front/embed") * 2)
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 10)  # until the gateway closes
        writer.close()
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2, data[:300]
