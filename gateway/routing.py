"""The gateway's routing core: which replica gets a request, and the counts.

The routing table is rebuilt from Postgres when a worker publishes a change (and by
polling, should a message be lost) and swapped in one assignment. In-flight and finished
requests are counted per replica and reported to Redis as a `GatewayReport`, so a
draining worker knows when old replicas are idle and the autoscaler sees the load.
Every gateway process has its own id and report, written every `HEARTBEAT_S` and at once
when a model's load jumps (`gateway.load_signal`), a request is held for a deployment at
zero, or a draining replica goes idle; a jump is also announced on `LOAD_CHANNEL`.
"""

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg
import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from db import deployments
from db.deployments import Route
from db.errors import DatabaseError
from edge.auth.locators import deployment_not_found
from edge.errors import HEADER_VALUE
from gateway.hold import Holds
from gateway.latency import LatencyTally
from gateway.load_signal import HEARTBEAT_S, MIN_GAP_S, LoadJumps
from gateway.metrics import GatewayMetrics
from gateway.upstream import AnswerTooLarge, ConnectFailed, Upstream, UpstreamError
from schemas import replica_auth
from schemas.errors import Unavailable, UpstreamTimeout, UpstreamUnreachable
from schemas.gateway import GENERATION_HEADER, REVISION_HEADER, GatewayReport
from schemas.queue import (
    AUTH_CHANNEL,
    GATEWAY_KEY_PREFIX,
    GATEWAY_TTL_S,
    LOAD_CHANNEL,
    ROUTES_CHANNEL,
)

log = structlog.get_logger(__name__)
MAX_ATTEMPTS = 3
_FORWARD_HEADERS = ("Content-Type", "Accept", "X-Request-Id")
_ROUTES, _AUTH = ROUTES_CHANNEL.encode(), AUTH_CHANNEL.encode()


def forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers passed on to a replica, each only when its value is plain ASCII (review
    L2: a UTF-8 X-Request-Id was a 500); an unfit X-Request-Id becomes a fresh id."""
    out = {h: headers[h] for h in _FORWARD_HEADERS
           if h in headers and HEADER_VALUE.fullmatch(headers[h])}
    if "X-Request-Id" in headers and "X-Request-Id" not in out:
        out["X-Request-Id"] = uuid4().hex
    return out


def answered_by(route: Route, replica_id: UUID) -> dict[str, str]:
    """The headers naming what answered: replica, generation and its pinned revision."""
    headers = {"X-Greenroom-Replica": str(replica_id),
               GENERATION_HEADER: str(route.generation)}
    if route.revision is not None:
        headers[REVISION_HEADER] = f"r{route.revision}"
    return headers


@dataclass(frozen=True, slots=True)
class Table:
    """An immutable snapshot of every route, by deployment name and by owner/name."""

    by_key: dict[str, Route]
    generations: dict[str, int]
    active: frozenset[UUID]

    @classmethod
    def build(cls, routes: list[Route]) -> "Table":
        by_key = {r.name: r for r in routes} | {r.identifier: r for r in routes}
        by_key |= {str(r.model_id): r for r in routes}
        return cls(by_key, {str(r.model_id): r.generation for r in routes},
                   frozenset(rid for r in routes for rid, _ in r.replicas))


class Gateway:
    def __init__(self, pool: asyncpg.Pool, redis: Redis, poll_s: float,
                 timeout_s: float = 60.0, secret_key: str | None = None,
                 max_answer_bytes: int = 32 * 1024 * 1024) -> None:
        self.id = uuid4().hex
        # Every request to a replica carries its generation's secret (schemas/replica_auth.py).
        self._secret_key = secret_key
        self._secrets: dict[tuple[UUID, int], str] = {}
        self._pool, self._redis, self._poll_s = pool, redis, poll_s
        self._table = Table({}, {}, frozenset())
        self.inflight: Counter[UUID] = Counter()
        self.served: Counter[UUID] = Counter()
        self.latency = LatencyTally()  # per model, for the console
        # Called on every message of the auth channel (an access cache clears itself).
        self.on_auth_change: list[Callable[[], None]] = []
        self.metrics = GatewayMetrics(self.inflight_by_replica)
        # Requests waiting for a deployment scaled to zero to get a replica.
        self.holds = Holds()
        # In flight by model, to report at once when a model's load jumps.
        self.jumps = LoadJumps()
        self._report_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._upstream = Upstream(timeout_s, max_answer_bytes=max_answer_bytes)

    async def start(self) -> None:
        with contextlib.suppress(DatabaseError):
            await self.reload()
        self._tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._report())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(GATEWAY_KEY_PREFIX + self.id)
        self._upstream.close()

    async def reload(self) -> None:
        self._table = table = Table.build(await deployments.routes(self._pool))
        stale = [rid for rid in self.served if rid not in table.active and rid not in self.inflight]
        for rid in stale:
            del self.served[rid]
        self._upstream.forget({ep for r in table.by_key.values() for _, ep in r.replicas})
        self._secrets = {k: v for k, v in self._secrets.items()
                         if table.generations.get(str(k[0])) == k[1]}
        self._report_now.set()
        self.holds.wake(self.lookup)

    def lookup(self, key: str) -> Route | None:
        return self._table.by_key.get(key)

    def route(self, key: str) -> Route:
        route = self._table.by_key.get(key)
        if route is None:
            raise deployment_not_found(key)
        return route

    def _pick(self, route: Route, tried: set[UUID]) -> tuple[UUID, str]:
        inflight = self.inflight
        best: tuple[UUID, str] | None = None
        least = -1
        for rid, endpoint in route.replicas:
            if rid in tried:
                continue
            n = inflight[rid]
            if best is None or n < least:
                best, least = (rid, endpoint), n
        if best is None:
            raise Unavailable(f"deployment {route.name!r} has no ready replica; retry shortly")
        return best

    async def forward(self, route: Route, method: str, path: str, body: bytes | None,
                      headers: Mapping[str, str]) -> web.Response:
        """Send the request to the least busy replica; retry elsewhere only if it cannot
        connect (once written, a request is never sent again: review M6)."""
        if not route.replicas and route.scales_to_zero:
            route = await self.holds.hold(route, self._held_changed, self.lookup)
        tried: set[UUID] = set()
        forward_headers = forwarded(headers)
        if self._secret_key is not None:
            forward_headers[replica_auth.HEADER] = self._secret(route)
        started, metrics = time.perf_counter(), self.metrics
        for _ in range(MAX_ATTEMPTS):
            replica_id, endpoint = self._pick(route, tried)
            deployment = route.name
            self.inflight[replica_id] += 1
            if self.jumps.started(route.model_id):
                self._report_now.set()
            try:
                answer = await self._upstream.request(endpoint, method, path, body,
                                                      forward_headers)
            except ConnectFailed as exc:
                log.warning("replica_unreachable", replica=str(replica_id), error=str(exc))
                metrics.upstream_errors.labels(deployment).inc()
                tried.add(replica_id)
                continue
            except UpstreamError as exc:
                self._failed_answer(route, replica_id, exc)
            except TimeoutError:
                metrics.requests.labels(deployment, "504").inc()
                raise UpstreamTimeout(f"replica of {route.name!r} did not answer in time") from None
            finally:
                self._release(replica_id, route.model_id)
            elapsed = time.perf_counter() - started
            metrics.observe(deployment, answer.status, elapsed)
            self.latency.observe(route.model_id, elapsed)
            out = web.Response(body=answer.body, status=answer.status,
                               headers=answered_by(route, replica_id))
            if answer.content_type:
                out.headers["Content-Type"] = answer.content_type
            return out
        metrics.requests.labels(route.name, "502").inc()
        raise UpstreamUnreachable(f"no replica of deployment {route.name!r} could be reached")

    def _secret(self, route: Route) -> str:
        key = (route.model_id, route.generation)
        secret = self._secrets.get(key)
        if secret is None:
            assert self._secret_key is not None
            secret = replica_auth.generation_secret(self._secret_key, *key)
            self._secrets[key] = secret
        return secret

    def _failed_answer(self, route: Route, replica_id: UUID, exc: UpstreamError) -> None:
        """A replica took the request and then failed it: a 502, logged, not retried."""
        too_large = isinstance(exc, AnswerTooLarge)
        log.warning("replica_answer_too_large" if too_large else "replica_failed_answer",
                    deployment=route.name, replica=str(replica_id), error=str(exc))
        self.metrics.upstream_errors.labels(route.name).inc()
        self.metrics.requests.labels(route.name, "502").inc()
        if too_large:
            raise UpstreamUnreachable(f"the replica's answer is too large for the gateway: {exc}"
                                      " (GREENROOM_GATEWAY_MAX_ANSWER_BYTES)") from None
        raise UpstreamUnreachable(f"the replica of {route.name!r} failed while answering; "
                                  "the request was not retried") from None

    def inflight_by_replica(self) -> dict[UUID, int]:
        """Requests in flight on every routed replica (zero included) and on draining ones."""
        return dict.fromkeys(self._table.active, 0) | dict(self.inflight)

    def _held_changed(self) -> None:
        """A request started or stopped waiting for a replica: the autoscaler hears now."""
        self.jumps.wake = True
        self._report_now.set()

    def _release(self, replica_id: UUID, model_id: UUID) -> None:
        self.jumps.finished(model_id)
        self.served[replica_id] += 1
        self.inflight[replica_id] -= 1
        if self.inflight[replica_id] <= 0:
            del self.inflight[replica_id]
            if replica_id not in self._table.active:
                self._report_now.set()

    async def _watch(self) -> None:
        """Reload on every published change, and at least every poll interval."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(ROUTES_CHANNEL, AUTH_CHANNEL)
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                           timeout=self._poll_s)
                        if message is not None and message.get("channel") in (_AUTH,
                                                                              AUTH_CHANNEL):
                            self._auth_changed()
                            continue
                        await self._reload_quietly()
            except (RedisError, OSError) as exc:
                log.warning("routes_channel_unavailable", error=str(exc))
                await asyncio.sleep(self._poll_s)
                await self._reload_quietly()

    def _auth_changed(self) -> None:
        for callback in self.on_auth_change:
            callback()

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except DatabaseError as exc:
            log.warning("routes_reload_failed", error=str(exc))

    def report(self, jumped: list[str] | None = None) -> GatewayReport:
        return GatewayReport(
            gateway_id=self.id, at=time.time(), generations=dict(self._table.generations),
            inflight={str(k): v for k, v in self.inflight.items() if v > 0},
            requests={str(k): v for k, v in self.served.items()}, held=self.holds.counts(),
            latency=self.latency.report(), jumped=jumped or [])

    async def _report(self) -> None:
        """Write the report every HEARTBEAT_S, or sooner when asked (at least MIN_GAP_S
        apart); after a jump, announce it on LOAD_CHANNEL in the same round trip."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):
                    await self._report_now.wait()
            self._report_now.clear()
            jumped, announce = self.jumps.reported()
            report = self.report(jumped)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.set(GATEWAY_KEY_PREFIX + self.id, report.model_dump_json(),
                             ex=GATEWAY_TTL_S)
                    if announce:
                        pipe.publish(LOAD_CHANNEL, self.id)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("gateway_report_failed", error=str(exc))
            await asyncio.sleep(MIN_GAP_S)
