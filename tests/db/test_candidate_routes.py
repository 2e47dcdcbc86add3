"""Migration 015: a canary candidate's replica added in its traffic phase (autoscaling on
its share, worker/scaling/phase_scaling.py) is not routed while it awaits its health
check; the candidate's other `starting` replicas are. Real Postgres."""

from uuid import UUID, uuid4

import asyncpg

from db import deployments, replicas, traffic
from db.traffic import Split
from schemas.models import ModelSource
from schemas.tasks import ReplicaState
from service.domain.registration import register


async def _replica(pool: asyncpg.Pool, model_id: UUID, generation: int, endpoint: str,
                   awaiting_health: bool = False) -> UUID:
    replica_id = uuid4()
    await replicas.insert(pool, replica_id=replica_id, model_id=model_id,
                          generation=generation, task_id=None, runtime="process",
                          awaiting_health=awaiting_health)
    await replicas.set_started(pool, replica_id, "ref", endpoint)
    return replica_id


async def test_a_candidate_replica_awaiting_health_is_routed_once_healthy(
        pool: asyncpg.Pool, clean: None) -> None:
    model = await register(pool, "alice", "awaits", ModelSource(backend="hashing",
                                                                 dimension=8), "public")
    await deployments.begin_generation(pool, model.id, "awaits")
    serving = await _replica(pool, model.id, 1, "http://serving")
    await replicas.set_state(pool, [serving], ReplicaState.ready)
    await deployments.switch(pool, model.id, 1, "awaits", {})
    await deployments.begin_generation(pool, model.id, "awaits")
    first = await _replica(pool, model.id, 2, "http://first")
    added = await _replica(pool, model.id, 2, "http://added", awaiting_health=True)
    await traffic.set_split(pool, model.id, Split(2, 20))

    async def candidate_endpoints() -> list[str]:
        route = next(r for r in await deployments.routes(pool) if r.model_id == model.id)
        assert route.candidate is not None and route.replicas == [(serving, "http://serving")]
        return [endpoint for _, endpoint in route.candidate.replicas]

    assert await candidate_endpoints() == ["http://first"]
    assert await replicas.set_healthy(pool, added)
    assert await candidate_endpoints() == ["http://first", "http://added"]
    assert not await replicas.set_healthy(pool, added), "only once"
    assert not await replicas.set_healthy(pool, first), "never awaited"
