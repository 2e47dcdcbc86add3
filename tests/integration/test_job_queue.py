"""POST /deploy's one-round-trip enqueue writes what arq's own enqueue_job writes: a
worker reads the job back, and a repeated job id is refused as arq refuses it."""

from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from redis.asyncio import ConnectionPool

from schemas.queue import JOB_RUN_TASK, QUEUE_NAME
from service.domain import job_queue


async def test_enqueued_job_is_the_one_arq_would_have_queued(
        backing: dict[str, str], clean: None) -> None:
    redis = ArqRedis(ConnectionPool.from_url(backing["redis"]), default_queue_name=QUEUE_NAME)
    try:
        assert await job_queue.enqueue(redis, JOB_RUN_TASK, "t-1", "t-1")
        job = Job("t-1", redis, _queue_name=QUEUE_NAME)
        assert await job.status() == JobStatus.queued
        info = await job.info()
        assert info is not None
        assert (info.function, info.args, info.kwargs, info.job_try) == (
            JOB_RUN_TASK, ("t-1",), {}, None)
        assert 0 < await redis.pttl("arq:job:t-1") <= redis.expires_extra_ms
        # A job id already queued: neither this nor arq's enqueue_job queues it again.
        assert not await job_queue.enqueue(redis, JOB_RUN_TASK, "t-1", "t-1")
        assert await redis.enqueue_job(JOB_RUN_TASK, "t-1", _job_id="t-1") is None
        assert await redis.zcard(QUEUE_NAME) == 1
        # One queued by arq: ours refuses it too.
        assert await redis.enqueue_job(JOB_RUN_TASK, "t-2", _job_id="t-2") is not None
        assert not await job_queue.enqueue(redis, JOB_RUN_TASK, "t-2", "t-2")
    finally:
        await redis.aclose()
