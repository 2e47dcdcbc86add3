"""A simulated capacity per replica, set by the test knobs MODEL_SERVER_TEST_SERVICE_TIME_MS
and MODEL_SERVER_TEST_CONCURRENCY: for the autoscaling tests and bench/autoscale.py, not
for production (off unless a knob is set). The test knob MODEL_SERVER_TEST_ERROR_RATE makes
a replica fail that share of its embedding requests with a 500 (the canary tests' bad
candidate): exactly, not by chance — request n fails when floor(n * rate) steps up, so
with 0.1 every tenth one does.

Each embedding request holds one of `test_concurrency` slots (the rest queue) for the
service time, asleep, before it is computed; so one replica serves at most
concurrency / service time requests a second, and the sleep costs no CPU. The slots are
handed out as the batcher fills its batches (issue 29): the interactive lane first, each
lane first come, first served, and a request holding a slot is never preempted; so a
simulated replica shows the lanes too (bench/embed_job.py's queries beside a job: before,
a query waited behind every queued request of the job for a slot). A request whose
X-Request-Timeout passes while it waits for a slot is answered 504 and counted in
`model_server_expired_total`, as one whose deadline passes in the batcher's queue is
(issue 29: work past its deadline is never computed, wherever it waits); the batcher
counts its own timeout from when the request leaves the slot queue.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

from model_server.config import Settings
from model_server.errors import DeadlineExceeded
from model_server.lanes import LANES, Lane, lane_of, timeout_of
from model_server.metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EMBED_PATHS = frozenset({"/", "/embed", "/embed_all", "/v1/embeddings"})


def middlewares(settings: Settings, metrics: Callable[[web.Request], Metrics]) -> list[
        Callable[..., Awaitable[web.StreamResponse]]]:
    """The knob's middleware when a knob is set, else none (no cost on a real server);
    `metrics` finds the app's metrics from a request."""
    errors = [_error_rate(settings.test_error_rate)] if settings.test_error_rate else []
    if not settings.test_service_time_ms and settings.test_concurrency is None:
        return errors
    delay = settings.test_service_time_ms / 1000
    slots = Slots(settings.test_concurrency) if settings.test_concurrency else None

    @web.middleware
    async def service_time(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path not in EMBED_PATHS:
            return await handler(request)
        if slots is None:
            await asyncio.sleep(delay)
            return await handler(request)
        timeout_s, lane = timeout_of(request.headers), lane_of(request.headers)
        try:
            async with asyncio.timeout(timeout_s):
                await slots.acquire(lane)
        except TimeoutError:
            metrics(request).expired.labels(lane).inc()
            raise DeadlineExceeded(
                f"the request's {timeout_s:g} s (X-Request-Timeout) passed while it waited "
                "for a slot", {"timeout_s": timeout_s}) from None
        try:
            await asyncio.sleep(delay)
            return await handler(request)
        finally:
            slots.release()

    return [service_time, *errors]


class Slots:
    """`count` slots, handed to waiting requests the interactive lane first, each lane in
    arrival order. (No starvation bound: a test knob's interactive load is the test's.)"""

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiting: dict[Lane, deque[asyncio.Future[None]]] = {
            lane: deque() for lane in LANES}

    async def acquire(self, lane: Lane) -> None:
        if self._free and not any(self._waiting.values()):
            self._free -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiting[lane].append(granted)
        try:
            await granted
        except BaseException:  # a deadline, or the caller gone
            if granted.done() and not granted.cancelled():
                self.release()  # handed a slot as it gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting[lane].remove(granted)
            raise

    def release(self) -> None:
        for lane in LANES:
            waiting = self._waiting[lane]
            while waiting:
                granted = waiting.popleft()
                if not granted.done():
                    granted.set_result(None)
                    return
        self._free += 1


def _error_rate(rate: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Fail `rate` of the embedding requests (a test knob), spread evenly."""
    seen = 0

    @web.middleware
    async def failing(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal seen
        if request.method != "POST" or request.path not in EMBED_PATHS:
            return await handler(request)
        before, seen = seen, seen + 1
        if int(seen * rate) > int(before * rate):
            return web.json_response(
                {"error": "failed by the test knob test_error_rate", "error_type": "Backend"},
                status=500)
        return await handler(request)

    return failing
