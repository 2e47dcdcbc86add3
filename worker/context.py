"""What every job and loop of a worker process shares."""

from dataclasses import dataclass

import aiohttp
import asyncpg
from arq.connections import ArqRedis

from schemas.settings import Settings
from worker.runtimes.base import Runtime


@dataclass(slots=True)
class WorkerContext:
    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis
    runtime: Runtime
    http: aiohttp.ClientSession
    worker_id: str
