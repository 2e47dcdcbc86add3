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
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
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
from gateway.tracing import RequestLog, traced, tracing_span_done
from gateway.traffic import (
    COMPARED_PATHS,
    MAX_SHADOWS_INFLIGHT,
    Tally,
    TrafficTally,
    cosines,
    mirrors,
    split,
)
from gateway.upstream import (
    Answer,
    AnswerTooLarge,
    ConnectFailed,
    NotTaken,
    Upstream,
    UpstreamError,
)
from schemas import replica_auth, tracing
from schemas.errors import Unavailable, UpstreamTimeout, UpstreamUnreachable
from schemas.gateway import GENERATION_HEADER, REVISION_HEADER, GatewayReport
from schemas.lanes import PRIORITY_HEADER, TIMEOUT_HEADER, TOKENS_HEADER
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
REPLICA_HEADER = "X-Greenroom-Replica"


def forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers passed on to a replica, each only when its value is plain ASCII (review
    L2: a UTF-8 X-Request-Id was a 500); an unfit X-Request-Id becomes a fresh id."""
    out = {h: headers[h] for h in _FORWARD_HEADERS
           if h in headers and HEADER_VALUE.fullmatch(headers[h])}
    if "X-Request-Id" in headers and "X-Request-Id" not in out:
        out["X-Request-Id"] = uuid4().hex
    return out


def answered_by(route: Route, generation: int, replica_id: UUID) -> dict[str, str]:
    """The headers naming what answered: replica, generation (the serving one, or a canary's
    candidate) and the revision that generation pinned."""
    revision = route.revision
    if route.candidate is not None and generation == route.candidate.split.generation:
        revision = route.candidate.revision
    headers = {REPLICA_HEADER: str(replica_id), GENERATION_HEADER: str(generation)}
    if revision is not None:
        headers[REVISION_HEADER] = f"r{revision}"
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
        candidates = [r.candidate.replicas for r in routes if r.candidate is not None]
        return cls(by_key, {str(r.model_id): r.generation for r in routes},
                   frozenset(rid for r in routes for rid, _ in r.replicas)
                   | frozenset(rid for replicas in candidates for rid, _ in replicas))


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
        # (replica, generation) -> the headers naming what answered (`_answered_by`).
        self._named: dict[tuple[UUID, int], dict[str, str]] = {}
        self.inflight: Counter[UUID] = Counter()
        self.served: Counter[UUID] = Counter()
        self.latency = LatencyTally()  # per model, for the console
        # Per replica, for the series over time (issue 31): failed answers and latency.
        self.failed: Counter[UUID] = Counter()
        self.replica_latency = LatencyTally()
        self.traffic = TrafficTally()  # per generation, for the canary judge
        self._shadows: set[asyncio.Task[None]] = set()  # mirrored requests in flight
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
        # OpenTelemetry's tracer when OTEL_EXPORTER_OTLP_ENDPOINT is set, else None (off).
        self.tracer = tracing.tracer("greenroom-gateway")
        self.log_requests = True  # GREENROOM_GATEWAY_REQUEST_LOG
        self.request_log = RequestLog()

    async def start(self) -> None:
        with contextlib.suppress(DatabaseError):
            await self.reload()
        self._tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._report())]

    async def close(self) -> None:
        for task in [*self._tasks, *self._shadows]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._shadows, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(GATEWAY_KEY_PREFIX + self.id)
        self._upstream.close()
        self.request_log.close()

    async def reload(self) -> None:
        self._table = table = Table.build(routes := await deployments.routes(self._pool))
        self._named = {}
        stale = [rid for rid in self.served if rid not in table.active and rid not in self.inflight]
        for rid in stale:
            del self.served[rid]
            self.failed.pop(rid, None)
        self.replica_latency.forget(set(stale))
        candidates = [r for r in routes if r.candidate is not None]
        self._upstream.forget({ep for r in table.by_key.values() for _, ep in r.replicas}
                              | {ep for r in candidates if r.candidate
                                 for _, ep in r.candidate.replicas})
        kept = {(r.model_id, r.candidate.split.generation) for r in candidates if r.candidate}
        self._secrets = {k: v for k, v in self._secrets.items()
                         if table.generations.get(str(k[0])) == k[1] or k in kept}
        self.traffic.keep(kept | {(r.model_id, r.generation) for r in routes})
        self._report_now.set()
        self.holds.wake(self.lookup)

    def lookup(self, key: str) -> Route | None:
        return self._table.by_key.get(key)

    def route(self, key: str) -> Route:
        route = self._table.by_key.get(key)
        if route is None:
            raise deployment_not_found(key)
        return route

    def _pick(self, route: Route, tried: set[UUID],
              replicas: list[tuple[UUID, str]] | None = None) -> tuple[UUID, str]:
        inflight = self.inflight
        best: tuple[UUID, str] | None = None
        least = -1
        for rid, endpoint in route.replicas if replicas is None else replicas:
            if rid in tried:
                continue
            n = inflight[rid]
            if best is None or n < least:
                best, least = (rid, endpoint), n
        if best is None:
            raise Unavailable(f"deployment {route.name!r} has no ready replica; retry shortly")
        return best

    async def forward(self, route: Route, method: str, path: str, body: bytes | None,
                      headers: Mapping[str, str],
                      deadline: float | None = None,
                      lane: str | None = None) -> web.Response:
        """Send the request to the least busy replica of the generation the split picks
        (gateway/traffic.py; gateway/tracing.py: its ids, and a span when OpenTelemetry is
        on). A `deadline` (time.monotonic(); gateway/admission.py) bounds a hold and its
        rest goes on to the replica as X-Request-Timeout, and the `lane` the gateway chose
        as X-Greenroom-Priority."""
        ids = tracing.incoming(headers)
        if self.tracer is None:
            return await self._forward(route, method, path, body, headers, ids,
                                       tracing.new_span_id(), None, deadline, lane)
        with traced(self.tracer, ids, route, path) as (ids, span_id, span):
            return await self._forward(route, method, path, body, headers, ids, span_id, span,
                                       deadline, lane)

    async def _forward(self, route: Route, method: str, path: str, body: bytes | None,
                       headers: Mapping[str, str], ids: tracing.TraceIds, span_id: str,
                       span: Any, deadline: float | None, lane: str | None) -> web.Response:
        """Retry elsewhere only a request no replica read: a failed connect, or one its
        kernel reset unread (once read, a request is never sent again: review M6). Counted
        under the generation that took it."""
        if not route.replicas and route.scales_to_zero and (
                route.candidate is None or not route.candidate.replicas):
            route = await self._hold(route, deadline)
        self._unexpired(route, deadline)
        generation, replicas, tally = self._choose(route)
        tried: set[UUID] = set()
        forward_headers = self._headers(route, generation, headers, deadline, lane)
        forward_headers[tracing.REQUEST_ID] = ids.request_id
        forward_headers[tracing.TRACEPARENT] = ids.traceparent(span_id)
        started, metrics = time.perf_counter(), self.metrics
        for _ in range(MAX_ATTEMPTS):
            replica_id, endpoint = self._pick_counted(route, tried, replicas, tally, started)
            deployment = route.name
            self.inflight[replica_id] += 1
            if self.jumps.started(route.model_id):
                self._report_now.set()
            try:
                answer = await self._upstream.request(endpoint, method, path, body,
                                                      forward_headers)
            except (ConnectFailed, NotTaken) as exc:  # the replica never read it
                log.warning("replica_unreachable", replica=str(replica_id), error=str(exc),
                            request_id=ids.request_id)
                metrics.upstream_errors.labels(deployment).inc()
                tried.add(replica_id)
                continue
            except UpstreamError as exc:
                self.failed[replica_id] += 1
                tally.observe(time.perf_counter() - started, True)
                self._failed_answer(route, replica_id, exc, ids.request_id)
            except TimeoutError:
                self.failed[replica_id] += 1
                log.warning("replica_timed_out", deployment=deployment, replica=str(replica_id),
                            request_id=ids.request_id)
                tally.observe(time.perf_counter() - started, True)
                metrics.count(deployment, 504)
                raise UpstreamTimeout(f"replica of {route.name!r} did not answer in time") from None
            finally:
                self._release(replica_id, route.model_id)
            elapsed = time.perf_counter() - started
            metrics.observe(deployment, answer.status, elapsed)
            self.latency.observe(route.model_id, elapsed)
            # A 504 to a request with a deadline is the replica dropping work the caller's
            # own X-Request-Timeout ran out on (model_server/lanes.py): expired, no error.
            expired = answer.status == 504 and deadline is not None
            named = self._answered_by(route, generation, replica_id)
            self._answered(route, replica_id, named[REPLICA_HEADER], path, answer.status,
                           elapsed, ids, span, generation, expired)
            tally.observe(elapsed, answer.status >= 500 and not expired)
            if mirrors(route):
                self._shadow(route, method, path, body, forward_headers, answer)
            return _response(answer, named, ids)
        metrics.count(route.name, 502)
        for replica_id in tried:
            self.failed[replica_id] += 1
        tally.observe(time.perf_counter() - started, True)
        raise UpstreamUnreachable(f"no replica of deployment {route.name!r} could be reached")

    def _answered_by(self, route: Route, generation: int, replica_id: UUID) -> dict[str, str]:
        """`answered_by`'s headers, made once per replica and generation (a generation pins
        its revision) until the next reload."""
        key = (replica_id, generation)
        named = self._named.get(key)
        if named is None:
            named = self._named[key] = answered_by(route, generation, replica_id)
        return named

    def _answered(self, route: Route, replica_id: UUID, replica: str, path: str, status: int,
                  elapsed: float, ids: tracing.TraceIds, span: Any, generation: int,
                  expired: bool = False) -> None:
        """A replica answered: its series counters (issue 31), the request line, the span."""
        self.replica_latency.observe(replica_id, elapsed)
        if expired:
            self.metrics.expired.labels(route.name).inc()
        elif status >= 500:
            self.failed[replica_id] += 1
        if self.log_requests:
            self.request_log.add(request_id=ids.request_id, trace_id=ids.trace_id,
                                 deployment=route.name, replica=replica, path=path,
                                 status=status, ms=round(elapsed * 1000.0, 2))
        if span is not None:
            tracing_span_done(span, replica_id, status, generation)

    def _unexpired(self, route: Route, deadline: float | None) -> None:
        """A request whose deadline passed before it was sent is the gateway's own 504
        (counted expired): no replica sees it, none is blamed for it."""
        if deadline is not None and deadline <= time.monotonic():
            self.metrics.expired.labels(route.name).inc()
            raise UpstreamTimeout(f"the request's X-Request-Timeout passed before it reached "
                                  f"a replica of {route.name!r}", {"deadline": "passed"})

    def _choose(self, route: Route) -> tuple[int, list[tuple[UUID, str]], Tally]:
        """The generation that takes the request (the split's pick during a canary), its
        replicas and its counters."""
        generation, replicas = route.generation, route.replicas
        if route.candidate is not None:
            generation, replicas = split(route, random.random() * 100)
        return generation, replicas, self.traffic.get(route.model_id, generation)

    def _pick_counted(self, route: Route, tried: set[UUID], replicas: list[tuple[UUID, str]],
                      tally: Tally, started: float) -> tuple[UUID, str]:
        try:
            return self._pick(route, tried, replicas)
        except Unavailable:
            if tried:  # every replica refused the connection: a failed request
                tally.observe(time.perf_counter() - started, True)
                for replica_id in tried:  # and the series' errors (served counted them)
                    self.failed[replica_id] += 1
            raise

    def _shadow(self, route: Route, method: str, path: str, body: bytes | None,
                headers: dict[str, str], served: Answer) -> None:
        """Mirror the request to the shadowed candidate in the background (bounded)."""
        if len(self._shadows) >= MAX_SHADOWS_INFLIGHT:
            return
        task = asyncio.create_task(self._mirror(route, method, path, body, dict(headers),
                                                served))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _mirror(self, route: Route, method: str, path: str, body: bytes | None,
                      headers: dict[str, str], served: Answer) -> None:
        """The candidate's answer is counted, compared with the served one, and dropped."""
        assert route.candidate is not None
        generation = route.candidate.split.generation
        tally = self.traffic.get(route.model_id, generation)
        if self._secret_key is not None:
            headers[replica_auth.HEADER] = self._secret(route.model_id, generation)
        try:
            replica_id, endpoint = self._pick(route, set(), route.candidate.replicas)
        except Unavailable:
            return
        self.inflight[replica_id] += 1
        started = time.perf_counter()
        try:
            answer = await self._upstream.request(endpoint, method, path, body, headers)
        except (ConnectFailed, UpstreamError, TimeoutError) as exc:
            tally.observe(time.perf_counter() - started, True)
            self.failed[replica_id] += 1  # the series counts it served: a failed one
            log.info("shadow_failed", deployment=route.name, error=str(exc))
            return
        finally:
            self._release_shadow(replica_id)
        elapsed = time.perf_counter() - started
        tally.observe(elapsed, answer.status >= 500)
        self.replica_latency.observe(replica_id, elapsed)
        if answer.status >= 500:
            self.failed[replica_id] += 1
        if answer.status == served.status == 200 and path in COMPARED_PATHS:
            _compare(tally, served.body, answer.body)

    def _release_shadow(self, replica_id: UUID) -> None:
        """A request on `replica_id` ended (a mirrored one, or through `_release`)."""
        self.served[replica_id] += 1
        self.inflight[replica_id] -= 1
        if self.inflight[replica_id] <= 0:
            del self.inflight[replica_id]
            if replica_id not in self._table.active:
                self._report_now.set()

    def _headers(self, route: Route, generation: int, headers: Mapping[str, str],
                 deadline: float | None, lane: str | None) -> dict[str, str]:
        """What goes to the replica: the caller's headers fit to pass on, the lane, the rest
        of the deadline and the generation's secret."""
        out = forwarded(headers)
        if lane is not None:
            out[PRIORITY_HEADER] = lane
        if deadline is not None:
            out[TIMEOUT_HEADER] = f"{max(0.001, deadline - time.monotonic()):.3f}"
        if self._secret_key is not None:
            out[replica_auth.HEADER] = self._secret(route.model_id, generation)
        return out

    async def _hold(self, route: Route, deadline: float | None) -> Route:
        try:
            return await self.holds.hold(route, self._held_changed, self.lookup, deadline)
        except UpstreamTimeout:  # the deadline passed while held (issue 29)
            self.metrics.expired.labels(route.name).inc()
            raise

    def _secret(self, model_id: UUID, generation: int) -> str:
        key = (model_id, generation)
        secret = self._secrets.get(key)
        if secret is None:
            assert self._secret_key is not None
            secret = replica_auth.generation_secret(self._secret_key, *key)
            self._secrets[key] = secret
        return secret

    def _failed_answer(self, route: Route, replica_id: UUID, exc: UpstreamError,
                       request_id: str) -> None:
        """A replica took the request and then failed it: a 502, logged, not retried."""
        too_large = isinstance(exc, AnswerTooLarge)
        log.warning("replica_answer_too_large" if too_large else "replica_failed_answer",
                    deployment=route.name, replica=str(replica_id), error=str(exc),
                    request_id=request_id)
        self.metrics.upstream_errors.labels(route.name).inc()
        self.metrics.count(route.name, 502)
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
        self._release_shadow(replica_id)

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
            latency=self.latency.report(), jumped=jumped or [],
            errors={str(k): v for k, v in self.failed.items()},
            replica_latency=self.replica_latency.report(), traffic=self.traffic.report())

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


def _response(answer: Answer, headers: dict[str, str], ids: tracing.TraceIds) -> web.Response:
    fields = {**headers, tracing.REQUEST_ID: ids.request_id}
    if answer.content_type:
        fields["Content-Type"] = answer.content_type
    if answer.tokens is not None:
        fields[TOKENS_HEADER] = answer.tokens
    return web.Response(body=answer.body, status=answer.status, headers=fields)


def _compare(tally: Tally, served: bytes, shadow: bytes) -> None:
    found = cosines(served, shadow)
    if found:
        tally.compared += len(found)
        tally.cosine_sum += sum(found)
