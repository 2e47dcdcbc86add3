"""POST /deploy's one-round-trip enqueue writes what arq's own enqueue_job writes: a
worker reads the job back, and a repeated job id is refused as arq refuses it."""

import json

from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from redis.asyncio import ConnectionPool

from schemas.queue import JOB_RUN_TASK, QUEUE_NAME, decode_job, encode_job
from service.domain import job_queue


async def test_enqueued_job_is_the_one_arq_would_have_queued(
        backing: dict[str, str], clean: None) -> None:
    redis = ArqRedis(ConnectionPool.from_url(backing["redis"]), default_queue_name=QUEUE_NAME,
                     job_serializer=encode_job, job_deserializer=decode_job)
    try:
        assert await job_queue.enqueue(redis, JOB_RUN_TASK, "t-1", "t-1")
        job = Job("t-1", redis, _queue_name=QUEUE_NAME, _deserializer=decode_job)
        assert await job.status() == JobStatus.queued
        info = await job.info()
        assert info is not None
        assert (info.function, tuple(info.args), info.kwargs, info.job_try) == (
            JOB_RUN_TASK, ("t-1",), {}, None)
        # Stored as JSON (the product's serializer), never pickle.
        raw = await redis.get("arq:job:t-1")
        assert raw is not None and json.loads(raw)["f"] == JOB_RUN_TASK
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
