"""arq's enqueue in one Redis round trip, for POST /deploy's hot path.

`ArqRedis.enqueue_job` takes three round trips (WATCH, EXISTS, then MULTI/PSETEX/ZADD/
EXEC). This does the same writes in one Lua script, atomically as Redis runs a script:
nothing happens if the job or its result already exists (a repeated job id), else the
job is stored with arq's serializer and expiry and added to the queue scored by now.
Workers read what it writes exactly as they read `enqueue_job`'s.
"""

from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

# KEYS: job, result, queue. ARGV: expiry (ms), serialized job, job id, score.
_ENQUEUE = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[4], ARGV[3])
return 1
"""


async def enqueue(redis: ArqRedis, function: str, job_id: str, *args: Any) -> bool:
    """Queue `function(*args)` as job `job_id` now; False if that job id is taken."""
    script = redis.register_script(_ENQUEUE)  # EVALSHA; loaded on the first NOSCRIPT
    now = timestamp_ms()
    job = serialize_job(function, args, {}, None, now, serializer=redis.job_serializer)
    added = await script(
        keys=[job_key_prefix + job_id, result_key_prefix + job_id, redis.default_queue_name],
        args=[redis.expires_extra_ms, job, job_id, now])
    return bool(added)
