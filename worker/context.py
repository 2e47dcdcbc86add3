"""What every job and loop of a worker process shares."""

from dataclasses import dataclass, field

import aiohttp
import asyncpg
from arq.connections import ArqRedis

from schemas.settings import Settings
from worker.metrics import WorkerMetrics
from worker.runtimes.base import Runtime


@dataclass(slots=True)
class WorkerContext:
    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis
    runtime: Runtime
    http: aiohttp.ClientSession
    worker_id: str
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
