"""What every job and loop of a worker process shares.

In worker code `ctx` is always this `WorkerContext`; arq's own per-worker dict, which
holds it under CONTEXT_KEY, is `arq_ctx` (worker/settings.py builds it; worker/jobs.py's
`arq_job` unwraps it).
"""

from dataclasses import dataclass, field

import aiohttp
import asyncpg
from arq.connections import ArqRedis

from schemas.settings import Settings
from worker.metrics import WorkerMetrics
from worker.runtimes.base import Runtime

CONTEXT_KEY = "worker_context"


@dataclass(slots=True)
class WorkerContext:
    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis
    runtime: Runtime
    http: aiohttp.ClientSession
    worker_id: str
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
