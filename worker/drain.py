"""Wait until every live gateway has stopped routing to, and finished its requests on, replicas."""

import asyncio
import json
from uuid import UUID

from redis.asyncio import Redis

from schemas.queue import GATEWAY_KEY_PREFIX

POLL_S = 0.1


async def _gateway_reports(redis: Redis) -> list[dict[str, dict[str, int]]]:
    keys = [k async for k in redis.scan_iter(match=GATEWAY_KEY_PREFIX + "*", count=100)]
    if not keys:
        return []
    values = await redis.mget(keys)
    return [json.loads(v) for v in values if v]


def _settled(report: dict[str, dict[str, int]], model_id: str, generation: int | None,
             replica_ids: set[str]) -> bool:
    """This gateway routes `model_id` to `generation` (None: not at all) and has 0 in flight."""
    if report.get("generations", {}).get(model_id) != generation:
        return False
    inflight = report.get("inflight", {})
    return all(inflight.get(r, 0) == 0 for r in replica_ids)


async def wait_drained(redis: Redis, model_id: UUID, generation: int | None,
                       replica_ids: list[UUID], timeout_s: float) -> bool:
    """True once drained; False if `timeout_s` passed first (the caller removes them anyway)."""
    wanted = {str(r) for r in replica_ids}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        reports = await _gateway_reports(redis)
        if all(_settled(r, str(model_id), generation, wanted) for r in reports):
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(POLL_S)
