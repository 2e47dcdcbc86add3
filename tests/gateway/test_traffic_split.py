"""Issue 27 at the gateway: a route with a candidate generation splits requests by weight,
mirrors a share in shadow, and counts per generation (requests, errors, latency), in the
GatewayReport the canary judge reads. Real gateway process, real hashing replicas."""

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast
from uuid import UUID, uuid4

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from db import deployments, replicas, traffic
from db.deployments import Route
from db.traffic import Candidate, Split
from gateway.haproxy.config import VIA_HEADER, split_servers
from gateway.haproxy.programmer import Programmer
from gateway.haproxy.runtime_api import RuntimeApi, ServerStat
from gateway.routing import Gateway
from gateway.traffic import cosines, split
from schemas.gateway import GENERATION_HEADER, read_reports
from schemas.queue import ROUTES_CHANNEL, RoutesChanged
from schemas.settings import Settings
from schemas.tasks import ReplicaState
from tests.conftest import Proc, start_gateway
from tests.gateway.test_gateway_answers import _until_routed, serve_from
from tests.gateway.test_haproxy_programmer import RecordingApi, _layout, _route
from tests.model_server.conftest import poll_health, start_server

A, B = (uuid4(), "http://127.0.0.1:1"), (uuid4(), "http://127.0.0.1:2")


def _canary(weight: int, shadow: float = 0.0, replicas: list[tuple[UUID, str]] | None = None
            ) -> Route:
    return Route(uuid4(), "m", "alice/m", 1, "public", [A],
                 candidate=Candidate(Split(2, weight, shadow), [B] if replicas is None
                                     else replicas))


def test_split_gives_the_candidate_its_weight_and_falls_back() -> None:
    route = _canary(25)
    picks = Counter(split(route, draw / 10)[0] for draw in range(1000))
    assert picks == {2: 250, 1: 750}
    assert split(_canary(0, shadow=50), 0.0)[0] == 1  # a shadow takes no request itself
    assert split(_canary(100), 99.9)[0] == 2
    # No ready candidate replica: the serving generation takes all.
    assert split(_canary(100, replicas=[]), 0.0) == (1, [A])
    with pytest.raises(ValueError, match="percents"):
        Split(2, 101)


async def test_a_stale_split_without_candidate_replicas_still_holds_at_zero() -> None:
    """Review 4c: a deployment scaled to zero held a request only when no split existed; a
    split left behind whose candidate has no replica answered 503 at once, and the
    autoscaler never heard of the demand. Now the request waits (counted as held)."""
    gateway = Gateway(cast(Any, None), cast(Any, None), poll_s=1.0)
    route = Route(uuid4(), "z", "alice/z", 1, "public", [], scales_to_zero=True,
                  candidate=Candidate(Split(2, 50), []))
    gateway.lookup = lambda key: route  # type: ignore[method-assign]
    forwarding = asyncio.create_task(gateway._forward(
        route, "POST", "/embed", b"{}", {}, cast(Any, None), "span", None, None, None))
    await asyncio.sleep(0.1)
    try:
        assert not forwarding.done(), forwarding
        assert gateway.holds.counts() == {str(route.model_id): 1}
    finally:
        forwarding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forwarding


def test_cosines_compare_embed_and_openai_answers() -> None:
    assert cosines(b"[[1, 0], [0, 2]]", b"[[2, 0], [0, 1]]") == [1.0, 1.0]
    assert cosines(b"[[1, 0]]", b"[[0, 1]]") == [0.0]
    openai = json.dumps({"data": [{"embedding": [3, 4]}]}).encode()
    assert cosines(openai, b"[[3, 4]]") == pytest.approx([1.0])
    for other in (b"[[1, 0], [0, 1]]", b"[[1, 0, 0]]", b"{}", b"not json", b'[["a", 1]]'):
        assert cosines(b"[[1, 0]]", other) is None


async def test_haproxy_weighs_a_canary_across_two_slots_and_settles_after(
        tmp_path: Path) -> None:
    """The HAProxy engine splits a canary itself (recording fake of the Runtime API; the
    real HAProxy below): the candidate gets its own slot, slot0's split backend weighs its
    two servers 100 - w and w, the names point at it; a step is two `set weight` in one line; a
    failed canary puts the names back on the serving slot before the candidate's drains;
    a green switch makes the candidate's slot the serving one. A shadow stays with the
    Python gateways (HAProxy 2.6 cannot mirror)."""
    api = RecordingApi()
    programmer = Programmer(api, _layout(tmp_path, slots=3))
    first, _ = _route(1, [7001])
    await programmer.apply([first])
    api.sent.clear()
    direct, via = tmp_path / "direct.map", tmp_path / "via.map"

    def at(generation: int, weight: int | None, shadow: float = 0.0) -> Route:
        candidate = None if weight is None else Candidate(Split(2, weight, shadow), [B])
        return Route(first.model_id, first.name, first.identifier, generation, "public",
                     first.replicas if generation == 1 else [B], candidate=candidate)

    await programmer.apply([at(1, 5)])
    assert api.sent == [
        f"add map {tmp_path / 'generations.map'} slot1 2",
        "set server slot1/s1_1 addr 127.0.0.1 port 2",
        f"add map {tmp_path / 'replicas.map'} s1_1 {B[0]}",
        "set server slot1/s1_1 state ready",
        f"set map {via} c0_2 slot1", "set weight split0/c0_1 95; set weight split0/c0_2 5",
        f"set map {direct} m split0", f"set map {direct} {first.model_id} split0",
    ]
    assert programmer.owners() == {"slot0": (first.model_id, 1), "slot1": (first.model_id, 2)}
    api.sent.clear()
    await programmer.apply([at(1, 5)])  # a routes read that changed nothing: no command
    assert api.sent == []
    await programmer.apply([at(1, 50)])
    assert api.sent == ["set weight split0/c0_1 50; set weight split0/c0_2 50"]

    # The step failed: the split is gone; the names go back first, then the drain.
    api.sent.clear()
    await programmer.apply([at(1, None)])
    assert api.sent == [f"set map {direct} m slot0", f"set map {direct} {first.model_id} slot0",
                        "set server slot1/s1_1 state drain"]
    await programmer.reap([ServerStat("slot1", "s1_1", 0, 3, 0)])

    # Another canary, to 100 %, then the green switch: its slot serves, slot0 drains.
    await programmer.apply([at(1, 100)])
    assert "set weight split0/c0_1 0; set weight split0/c0_2 100" in api.sent
    candidate_slot = programmer.owners()
    api.sent.clear()
    await programmer.apply([at(2, None)])
    slot = next(b for b, owner in candidate_slot.items() if owner[1] == 2)
    assert api.sent == [f"set map {direct} m {slot}", f"set map {direct} {first.model_id} {slot}",
                        "set server slot0/s0_1 state drain"]
    assert programmer.owners() == {slot: (first.model_id, 2)}

    # A shadow is the Python gateways': the names leave the map.
    api.sent.clear()
    shadowed = Route(first.model_id, "m", "alice/m", 2, "public", [B],
                     candidate=Candidate(Split(3, 0, 10.0), [A]))
    await programmer.apply([shadowed])
    assert api.sent[:2] == [f"del map {direct} m", f"del map {direct} {first.model_id}"]


@contextlib.asynccontextmanager
async def replica(http: aiohttp.ClientSession, tmp_path: Path, **env: str
                  ) -> AsyncIterator[str]:
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_DIMENSION="8",
                          **env)
    try:
        await poll_health(http, server)
        yield server.url
    finally:
        server.stop()


async def candidate_generation(pool: asyncpg.Pool, model_id: UUID, name: str,
                               endpoint: str) -> tuple[int, UUID]:
    """A next generation with one ready replica at `endpoint`, not serving."""
    _, generation = await deployments.begin_generation(pool, model_id, name)
    replica_id = uuid4()
    await replicas.insert(pool, replica_id=replica_id, model_id=model_id,
                          generation=generation, task_id=None, runtime="process")
    await replicas.set_started(pool, replica_id, "test", endpoint)
    await replicas.set_state(pool, [replica_id], ReplicaState.ready)
    return generation, replica_id


async def _set(pool: asyncpg.Pool, redis: Redis, model_id: UUID, value: Split | None) -> None:
    if value is None:
        await traffic.clear_split(pool, model_id)
    else:
        await traffic.set_split(pool, model_id, value)
    await redis.publish(ROUTES_CHANNEL, RoutesChanged(model_id).encode())
    await asyncio.sleep(0.3)  # the gateway reloads on the notice


async def _traffic(redis: Redis, model_id: UUID, haproxy: bool | None = None
                   ) -> dict[str, Any]:
    """Each generation's traffic in the gateways' reports (`haproxy`: only the HAProxy
    controller's, or only the Python gateways')."""
    await asyncio.sleep(1.2)  # a report every second
    reports = await read_reports(redis)
    return {gen: t for r in reports
            if haproxy is None or r.gateway_id.startswith("haproxy-") == haproxy
            for gen, t in r.traffic.get(str(model_id), {}).items()}


@pytest.mark.timeout(120)
async def test_weighted_split_shadow_and_per_generation_counts(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path, settings: Settings) -> None:
    model_id = await hashing_model("split")
    redis = Redis.from_url(settings.redis_url or "")
    async with replica(http, tmp_path) as serving_url, \
            replica(http, tmp_path, MODEL_SERVER_TEST_ERROR_RATE="0.5") as candidate_url:
        serving_ids = await serve_from(pool, model_id, "split", [serving_url])
        generation, candidate_id = await candidate_generation(pool, model_id, "split",
                                                              candidate_url)
        base = await start_gateway(spawn, http)
        url = f"{base}/serve/split/embed"
        await _until_routed(http, url, {"inputs": "x"})

        # Canary at 30 %: the candidate answers about 30 % (a binomial's 4 sd either way),
        # and half of those fail (its test knob); the gateway counts both generations.
        await _set(pool, redis, model_id, Split(generation, 30))
        before = await _traffic(redis, model_id)
        seen: Counter[tuple[str, int]] = Counter()
        for _ in range(200):
            async with http.post(url, json={"inputs": "x"}) as resp:
                await resp.read()
                seen[(resp.headers.get("X-Greenroom-Replica", ""), resp.status)] += 1
        to_candidate = sum(n for (rid, _), n in seen.items() if rid == str(candidate_id))
        assert 34 <= to_candidate <= 86, seen
        after = await _traffic(redis, model_id)
        serving_gen = str(generation - 1)
        served = after[serving_gen].since(before[serving_gen])
        tried = after[str(generation)].since(before.get(str(generation))
                                             or type(after[str(generation)])())
        assert served is not None and tried is not None
        assert served.requests + tried.requests == 200
        assert tried.requests == to_candidate and served.errors == 0
        assert tried.errors == sum(n for (_, status), n in seen.items() if status == 500)
        assert abs(tried.errors - to_candidate / 2) <= 1
        assert sum(tried.latency.buckets) == tried.requests

        # Shadow at 50 %: every answer is the serving generation's; the candidate sees
        # about half the requests, answers discarded, its good ones compared (cosine 1:
        # the same hashing backend).
        await _set(pool, redis, model_id, Split(generation, 0, shadow_percent=50))
        before = await _traffic(redis, model_id)
        for _ in range(200):
            async with http.post(url, json={"inputs": ["a", "b"]}) as resp:
                await resp.read()
                assert resp.status == 200
                assert resp.headers["X-Greenroom-Replica"] == str(serving_ids[0])
        after = await _traffic(redis, model_id)
        mirrored = after[str(generation)].since(before[str(generation)])
        assert mirrored is not None
        assert 60 <= mirrored.requests <= 140, mirrored
        good = mirrored.requests - mirrored.errors
        assert mirrored.compared == 2 * good and abs(mirrored.cosine_sum - 2 * good) < 1e-6

        # Back to the serving generation alone.
        await _set(pool, redis, model_id, None)
        for _ in range(20):
            async with http.post(url, json={"inputs": "x"}) as resp:
                assert resp.headers["X-Greenroom-Replica"] == str(serving_ids[0])
    await redis.aclose()


def test_an_unreadable_split_is_no_split() -> None:
    from db.traffic import split_of

    assert split_of('{"generation": 3, "weight": 5}') == Split(3, 5)
    assert split_of({"generation": 3, "shadow_percent": 10}) == Split(3, 0, 10.0)
    for bad in ('"text"', "[]", '{"weight": 5}', '{"generation": 2, "weight": 500}', "{"):
        assert split_of(bad) is None, bad


async def _haproxy_traffic(redis: Redis, model_id: UUID) -> dict[str, Any]:
    """Each generation's traffic in the HAProxy controller's first report written at least
    0.2 s from now (what HAProxy finished by now is in it), rather than after a fixed
    sleep: on a loaded machine a report may come late."""
    wanted = time.time() + 0.2
    for _ in range(150):
        await asyncio.sleep(0.1)
        for report in await read_reports(redis):
            if report.gateway_id.startswith("haproxy-") and report.at >= wanted:
                return dict(report.traffic.get(str(model_id), {}))
    raise AssertionError("the HAProxy controller wrote no report for 15 s")


async def haproxy_api(tmp_path: Path) -> RuntimeApi:
    """The admin socket of the `--engine haproxy` gateway this test started (its folder
    is in the controller's `haproxy_started` log line)."""
    for _ in range(100):
        for log in tmp_path.glob("gateway.server-*.log"):
            found = re.search(r'"folder": "([^"]+)", [^\n]*"haproxy_started"',
                              log.read_text(errors="replace"))
            if found:
                return RuntimeApi(Path(found.group(1)) / "admin.sock")
        await asyncio.sleep(0.1)
    raise AssertionError("no haproxy_started line in the gateway's log")


async def split_weights(api: RuntimeApi, layout_folder: Path, name: str) -> dict[str, int]:
    """The split backend `name` is mapped to, and its servers' weights read back from
    HAProxy (`get weight`): {"backend": ..., "c<K>_1": w1, "c<K>_2": w2}; {} when the name
    is not mapped to a split backend."""
    mapped = await api.command(f"show map {layout_folder / 'direct.map'}")
    backend = next((line.split()[-1] for line in mapped.splitlines()
                    if len(line.split()) == 3 and line.split()[1] == name), "")
    if not backend.startswith("split"):
        return {}
    index = int(backend.removeprefix("split"))
    weights: dict[str, int] = {}
    for server in split_servers(index):
        answer = await api.command(f"get weight {backend}/{server}")
        weights[server] = int(answer.split()[0])  # "95 (initial 1)"
    return weights


@pytest.mark.timeout(120)
async def test_haproxy_splits_a_canary_by_server_weights_and_counts_per_generation(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path, settings: Settings) -> None:
    """The HAProxy engine splits a canary itself: the weights read back from its Runtime
    API are the split's (summing to 100), each generation takes its share of requests
    (roundrobin over the weights: to within one), and its report counts each
    generation's requests, errors (a candidate answering half its requests with 500s)
    and latency exactly as the clients saw them. After the split HAProxy serves the
    serving generation's slot alone again."""
    from gateway.haproxy.controller import find_haproxy

    if find_haproxy(Settings()) is None:
        pytest.skip("haproxy is not installed")
    model_id = await hashing_model("hasplit")
    redis = Redis.from_url(settings.redis_url or "")
    async with replica(http, tmp_path) as serving_url, \
            replica(http, tmp_path, MODEL_SERVER_TEST_ERROR_RATE="0.5") as candidate_url:
        serving_ids = await serve_from(pool, model_id, "hasplit", [serving_url])
        generation, candidate_id = await candidate_generation(pool, model_id, "hasplit",
                                                              candidate_url)
        base = await start_gateway(spawn, http, gateway_engine="haproxy", haproxy_slots=4)
        api = await haproxy_api(tmp_path)
        url = f"{base}/serve/hasplit/embed"
        await _until_routed(http, url, {"inputs": "x"})
        await _set(pool, redis, model_id, Split(generation, 30))
        for _ in range(50):  # the controller's reload
            weights = await split_weights(api, api.socket.parent, "hasplit")
            if weights:
                break
            await asyncio.sleep(0.1)
        assert sorted(weights.values()) == [30, 70] and sum(weights.values()) == 100, weights
        before = await _haproxy_traffic(redis, model_id)
        seen: Counter[tuple[str, int]] = Counter()
        # Every request names the candidate's split server itself: HAProxy replaces the
        # header with the server it picked (a client cannot choose its generation).
        spoofed = {VIA_HEADER: min(weights, key=lambda server: weights[server])}
        labels: set[tuple[str, str]] = set()
        for _ in range(100):
            async with http.post(url, json={"inputs": "x"}, headers=spoofed) as resp:
                await resp.read()
                seen[(resp.headers.get("X-Greenroom-Replica", ""), resp.status)] += 1
                labels.add((resp.headers.get("X-Greenroom-Replica", ""),
                            resp.headers.get(GENERATION_HEADER, "")))
        # Each answer names the generation that gave it (its slot's label, issue 26).
        assert labels == {(str(serving_ids[0]), str(generation - 1)),
                          (str(candidate_id), str(generation))}, labels
        to_candidate = sum(n for (rid, _), n in seen.items() if rid == str(candidate_id))
        failed = sum(n for (_, status), n in seen.items() if status == 500)
        assert abs(to_candidate - 30) <= 1, seen
        assert 0 < failed < to_candidate, seen
        after = await _haproxy_traffic(redis, model_id)
        served = after[str(generation - 1)].since(before[str(generation - 1)])
        tried = after[str(generation)].since(before.get(str(generation))
                                             or type(after[str(generation)])())
        assert served is not None and tried is not None, (before, after)
        print(f"\n  haproxy split 30 %: candidate {tried.requests} req {tried.errors} err "
              f"p50 {tried.quantile(0.5)} s; serving {served.requests} req p50 "
              f"{served.quantile(0.5)} s")
        assert served.requests == 100 - to_candidate and served.errors == 0
        assert tried.requests == to_candidate and tried.errors == failed
        # A log line per request (none lost at this pace): each generation's histogram.
        assert sum(tried.latency.buckets) == tried.requests
        assert sum(served.latency.buckets) == served.requests
        # The Python gateways behind HAProxy carried none of it.
        python = await _traffic(redis, model_id, haproxy=False)
        assert str(generation) not in python, python

        # The step's next weight: two `set weight`, read back.
        await _set(pool, redis, model_id, Split(generation, 75))
        for _ in range(50):
            weights = await split_weights(api, api.socket.parent, "hasplit")
            if sorted(weights.values()) == [25, 75]:
                break
            await asyncio.sleep(0.1)
        assert sorted(weights.values()) == [25, 75], weights

        await _set(pool, redis, model_id, None)
        await asyncio.sleep(0.5)
        assert await split_weights(api, api.socket.parent, "hasplit") == {}
        for _ in range(20):
            async with http.post(url, json={"inputs": "x"}) as resp:
                assert resp.headers["X-Greenroom-Replica"] == str(serving_ids[0])
    await redis.aclose()
