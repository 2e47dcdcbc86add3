"""Prometheus metrics of a worker, served on `worker_metrics_port` (off when unset).

Tasks by kind and outcome, how long a task waited to be picked up, rollout phase
durations, reconciler actions, and, refreshed each reconcile pass, live replicas by state
and the depth of the arq queue.
"""

from datetime import UTC, datetime

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = structlog.get_logger(__name__)
# Seconds: a phase or a pickup takes from milliseconds (switching) to minutes (a slow pull).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.tasks = Counter("greenroom_worker_tasks", "Tasks this worker ran, by how they ended",
                             ["kind", "outcome"], registry=registry)
        self.pickup_delay = Histogram(
            "greenroom_worker_task_pickup_delay_seconds",
            "Time from a task's creation to this worker claiming it",
            buckets=DURATION_BUCKETS, registry=registry)
        self.phase_duration = Histogram(
            "greenroom_worker_rollout_phase_duration_seconds",
            "Time a task spent in each rollout phase", ["kind", "phase"],
            buckets=DURATION_BUCKETS, registry=registry)
        self.reconciler_actions = Counter(
            "greenroom_worker_reconciler_actions",
            "What the reconciler did: tasks released or enqueued, replicas replaced or removed",
            ["action"], registry=registry)
        self.replicas = Gauge("greenroom_replicas", "Live replicas of every model, by state",
                              ["state"], registry=registry)
        self.queue_depth = Gauge("greenroom_worker_queue_depth",
                                 "Jobs waiting in the arq queue", registry=registry)

    def picked_up(self, created_at: datetime) -> None:
        self.pickup_delay.observe(max(0.0, (datetime.now(UTC) - created_at).total_seconds()))


async def serve(metrics: WorkerMetrics, host: str, port: int) -> web.AppRunner | None:
    """GET /metrics on host:port; None (and a warning) if the port is taken."""
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.warning("worker_metrics_port_unavailable", port=port, error=str(exc))
        await runner.cleanup()
        return None
    log.info("worker_metrics_serving", host=host, port=port)
    return runner
