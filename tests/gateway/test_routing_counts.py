"""Review findings 8, 9, 10 and the span's generation (Low), at the gateway's routing core
(gateway/routing.py) in process, in front of real hashing model-server apps: what each
request counts where (the series' served/failed/latency per replica, the canary judge's
per-generation counters, the expired metric), and which generation the span names.

A request whose X-Request-Timeout passed before it was forwarded is answered 504 by the
gateway itself (the replica never sees it); a replica's own deadline 504 is no replica
error; a mirrored request counts in the series like a served one; every replica refusing
the connection counts as their failures; a generation replaced loses its counters."""

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from db.deployments import Route
from db.traffic import Candidate, Split
from gateway import routing
from gateway.routing import Gateway
from model_server.app import create_app
from schemas.errors import Unavailable, UpstreamTimeout
from tests.model_server.conftest import GatedEmbedder, GatedLoader, free_port, hashing_settings

HOST = "127.0.0.1"
BODY = orjson.dumps({"inputs": ["one input"]})
JSON = {"Content-Type": "application/json"}
Replica = tuple[UUID, str]


def _loaded() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@pytest.fixture
async def replica() -> AsyncIterator[Callable[..., Awaitable[Replica]]]:
    """A real model-server app (hashing) on a loopback port: (its id, its endpoint)."""
    servers: list[TestServer] = []

    async def start(embedder: GatedEmbedder | None = None) -> Replica:
        embedder = embedder or GatedEmbedder(dimension=64)
        server = TestServer(create_app(hashing_settings(), GatedLoader(embedder, _loaded())),
                            host=HOST)
        await server.start_server()
        servers.append(server)
        url = f"http://{HOST}:{server.port}"
        async with ClientSession() as http:
            for _ in range(500):
                async with http.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return uuid4(), url
                await asyncio.sleep(0.01)
        raise AssertionError("the model server never became healthy")

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def gateway(backing: dict[str, str]) -> AsyncIterator[Gateway]:
    redis = Redis.from_url(backing["redis"])
    gw = Gateway(None, redis, poll_s=1.0)  # type: ignore[arg-type]  # no database: no reload
    yield gw
    await gw.close()
    await redis.aclose()


def _route(replicas: list[Replica], candidate: Candidate | None = None,
           model_id: UUID | None = None) -> Route:
    return Route(model_id or uuid4(), "m", "alice/m", 1, "public", replicas,
                 candidate=candidate)


async def _embeds(endpoint: str) -> int:
    """/embed requests the replica answered, by its /metrics."""
    async with ClientSession() as http, http.get(f"{endpoint}/metrics") as resp:
        text = await resp.text()
    return int(sum(float(n) for n in re.findall(
        r'model_server_requests_total\{route="/embed",status="\d+"\} (\S+)', text)))


def _expired(gw: Gateway) -> float:
    return gw.metrics.expired.labels("m")._value.get()  # type: ignore[no-any-return]


async def test_a_passed_deadline_is_answered_504_by_the_gateway(
        gateway: Gateway, replica: Callable[..., Awaitable[Replica]]) -> None:
    rid, endpoint = await replica()
    route = _route([(rid, endpoint)])
    with pytest.raises(UpstreamTimeout, match="passed before it reached a replica"):
        await gateway.forward(route, "POST", "/embed", BODY, JSON,
                              deadline=time.monotonic() - 0.5)
    assert await _embeds(endpoint) == 0, "the replica never saw it"
    assert _expired(gateway) == 1
    assert not gateway.failed and not gateway.served
    assert gateway.traffic.get(route.model_id, 1).errors == 0
    answer = await gateway.forward(route, "POST", "/embed", BODY, JSON,
                                   deadline=time.monotonic() + 5)
    assert answer.status == 200 and await _embeds(endpoint) == 1


async def test_a_replicas_deadline_504_is_expired_not_a_replica_error(
        gateway: Gateway, replica: Callable[..., Awaitable[Replica]]) -> None:
    held = GatedEmbedder(dimension=64)
    rid, endpoint = await replica(held)
    route = _route([(rid, endpoint)])
    held.hold = True
    try:
        answer = await gateway.forward(route, "POST", "/embed", BODY, JSON,
                                       deadline=time.monotonic() + 0.3)
    finally:
        held.release.set()
    assert answer.status == 504, answer.text
    assert _expired(gateway) == 1
    assert gateway.served[rid] == 1 and gateway.failed[rid] == 0
    tally = gateway.traffic.get(route.model_id, 1)
    assert (tally.requests, tally.errors) == (1, 0)


async def test_refused_connections_count_as_the_replicas_failures(gateway: Gateway) -> None:
    rid = uuid4()
    route = _route([(rid, f"http://{HOST}:{free_port()}")])  # nothing listens there
    with pytest.raises(Unavailable):
        await gateway.forward(route, "POST", "/embed", BODY, JSON)
    assert gateway.served[rid] == 1 and gateway.failed[rid] == 1
    assert gateway.traffic.get(route.model_id, 1).errors == 1


async def test_a_mirrored_request_counts_in_the_series_like_a_served_one(
        gateway: Gateway, replica: Callable[..., Awaitable[Replica]]) -> None:
    serving = await replica()
    candidate = await replica()
    refusing = (uuid4(), f"http://{HOST}:{free_port()}")
    for shadow, failed in ((candidate, 0), (refusing, 1)):
        route = _route([serving], Candidate(Split(2, 0, 100.0), [shadow]))
        answer = await gateway.forward(route, "POST", "/embed", BODY, JSON)
        assert answer.status == 200
        for _ in range(200):
            if not gateway._shadows:
                break
            await asyncio.sleep(0.01)
        rid = shadow[0]
        assert gateway.served[rid] == 1 and gateway.failed[rid] == failed
        assert gateway.traffic.get(route.model_id, 2).errors == failed
        latency = gateway.replica_latency.report().get(str(rid))
        assert (latency is not None) == (not failed), "an answer's latency is the replica's"


async def test_the_span_names_the_generation_that_answered(
        gateway: Gateway, replica: Callable[..., Awaitable[Replica]]) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gateway.tracer = provider.get_tracer("test")
    route = _route([await replica()], Candidate(Split(2, 100), [await replica()]))
    answer = await gateway.forward(route, "POST", "/embed", BODY, JSON)
    assert answer.headers["X-Greenroom-Generation"] == "2"
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["greenroom.generation"] == 2


async def test_reload_drops_the_counters_of_generations_no_longer_routed(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    model, other = uuid4(), uuid4()
    for key in ((model, 1), (model, 2), (model, 3), (other, 5)):
        gateway.traffic.get(*key).observe(0.01, False)
    routed: list[Route] = []

    async def fake_routes(db: Any) -> list[Route]:  # a fake of the database's route table
        return routed

    monkeypatch.setattr(routing.deployments, "routes", fake_routes)
    # Generation 2 serves, 3 is its canary's candidate; 1 was replaced; `other` is gone.
    routed.append(Route(model, "m", "alice/m", 2, "public", [],
                        candidate=Candidate(Split(3, 10), [])))
    await gateway.reload()
    assert set(gateway.traffic.report()) == {str(model)}
    assert set(gateway.traffic.report()[str(model)]) == {"2", "3"}
    routed[0] = Route(model, "m", "alice/m", 3, "public", [])  # the candidate took over
    await gateway.reload()
    assert gateway.traffic.report() == {str(model): {"3": gateway.traffic.get(model, 3).report()}}
