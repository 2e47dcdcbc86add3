"""Prometheus metrics of the API process: requests by route template.

Each app has a registry of its own, so two apps in one process (tests) do not share
series. Names follow Prometheus' conventions: base units, `_total` counters. The gateway's
are in gateway/metrics.py; the buckets and the text format both use, in edge/metrics.py.
"""

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram

from edge.metrics import LATENCY_BUCKETS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNMATCHED = "unmatched"  # a path no route matches: one label value, not one per path
# Any other method a client invents is counted as OTHER_METHOD: one series, not one each.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


class ApiMetrics:
    """Requests the API answered, by method, route template and status, and their latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "greenroom_api_requests", "HTTP requests answered by the API",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "greenroom_api_request_duration_seconds", "Time to answer an HTTP request",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        # Labelled children cached: `labels()` takes a lock and builds a key per call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._children.get((method, route, status))
        if children is None:
            children = (self.requests.labels(method, route, str(status)),
                        self.latency.labels(method, route))
            self._children[(method, route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def middleware(self) -> Middleware:
        @web.middleware
        async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                method = request.method if request.method in KNOWN_METHODS else OTHER_METHOD
                self.observe(method, _route_template(request), status,
                             time.perf_counter() - started)
        return measure


def _route_template(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else UNMATCHED
