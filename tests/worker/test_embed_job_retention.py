"""Issue 30: an ended embed job's files and the job go after `embed_retention_days` (each
worker's retention pass, worker/embed_job.py `prune`); a running job is never touched, and
the task retention leaves embed jobs' tasks to this pass (real Postgres, files on disk)."""

from pathlib import Path
from uuid import UUID, uuid4

import asyncpg

from db import embed_jobs, retention
from schemas.embed_jobs import INPUT_FILE, RESULTS_FILE, job_dir
from schemas.models import ModelSource
from service.domain.registration import register
from tests.support.accounts import make_user
from worker import embed_job
from worker.context import WorkerContext

DAY_S = 86_400.0


async def _job(ctx: WorkerContext, model_id: UUID, owner: int, status: str) -> Path:
    job_id = uuid4()
    await embed_jobs.insert(ctx.pool, job_id=job_id, owner_id=owner, model_id=model_id,
                            generation=1, dimensions=None, normalize=True,
                            request={"generation": 1}, request_hash="h", input_bytes=10,
                            total=1)
    await ctx.pool.execute("UPDATE tasks SET status = $2, finished_at = CASE WHEN $2 = 'done' "
                           "THEN now() - interval '40 days' END WHERE id = $1", job_id, status)
    folder = job_dir(ctx.settings, job_id)
    folder.mkdir(parents=True)
    (folder / INPUT_FILE).write_text('{"id": 1, "text": "a"}\n')
    (folder / RESULTS_FILE).write_text('{"id": 1, "embedding": [1.0]}\n')
    return folder


async def test_ended_jobs_expire_with_their_files(fake_ctx: WorkerContext,
                                                  pool: asyncpg.Pool) -> None:
    model = await register(pool, "alice", "corpus", ModelSource(backend="hashing"), "public")
    owner, _ = await make_user(pool, "alice")
    old = await _job(fake_ctx, model.id, owner.id, "done")  # ended 40 days ago
    running = await _job(fake_ctx, model.id, owner.id, "processing")
    assert await retention.prune_tasks(pool, 30 * DAY_S) == 0, "embed tasks go with their job"
    # retention of 7 days: the old job's expiry (its end + 7 days) has passed
    settings = fake_ctx.settings.model_copy(update={"embed_retention_days": 7.0})
    ctx = WorkerContext(settings=settings, pool=pool, redis=fake_ctx.redis,
                        runtime=fake_ctx.runtime, http=fake_ctx.http, worker_id="w")
    assert await embed_job.prune(ctx) == 1
    assert not old.exists()
    assert await embed_jobs.get(pool, UUID(old.name)) is None
    assert await pool.fetchval("SELECT count(*) FROM tasks WHERE id = $1", UUID(old.name)) == 0
    assert running.exists() and await embed_jobs.get(pool, UUID(running.name)) is not None
    # a job that ends now is kept for its retention, then goes
    await pool.execute("UPDATE tasks SET status = 'done', finished_at = now() WHERE id = $1",
                       UUID(running.name))
    assert await embed_job.prune(ctx) == 0
    job = await embed_jobs.get(pool, UUID(running.name))
    assert job is not None and job.expires_at is not None
    await pool.execute("UPDATE embed_jobs SET expires_at = now() - interval '1 second'")
    assert await embed_job.prune(ctx) == 1 and not running.exists()
